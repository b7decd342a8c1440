// Builds a bulk job's body off the main thread: 100,000 rows are ~20 MB of JSON, whose
// building froze the page for seconds. Answers {blob, bytes} (a Blob is handed over without a
// copy, and fetch sends it as it is), or {error}.

import { rowsRequest } from "./requests.js";

self.onmessage = ({ data: { model, rows } }) => {
  try {
    const text = JSON.stringify(rowsRequest(model, rows));
    self.postMessage({ blob: new Blob([text], { type: "application/json" }), bytes: text.length });
  } catch (exc) {
    self.postMessage({ error: String(exc.message || exc) });
  }
};
