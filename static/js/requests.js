// Request bodies built from a model's signature and the example rows it ships
// (models/<name>/examples.json, in its /v1/models entry). Pure: no DOM, so that the bulk
// worker (bulk-worker.js) builds the same bodies off the main thread.

/** The shape of one row of `input` (its dimensions after the batch one; variable ones as 1). */
export function rowShape(input) {
  return input.shape.slice(1).map((d) => (d > 0 ? d : 1));
}

/** The number of values in one row of `input`. */
export function rowSize(input) {
  return rowShape(input).reduce((a, b) => a * b, 1);
}

export function randomValue(datatype) {
  if (datatype === "BOOL") return Math.random() < 0.5;
  if (datatype === "BYTES") return Math.random().toString(36).slice(2, 7);
  if (datatype.startsWith("FP")) return Math.round(Math.random() * 100) / 100;
  return Math.floor(Math.random() * 10);
}

export function zero(datatype) {
  return datatype === "BOOL" ? false : datatype === "BYTES" ? "" : 0;
}

/** The latest version's inputs of a model entry. */
export function inputsOf(model) {
  return model.versions[model.latest].inputs;
}

/**
 * The values of row `i` of `input`: the model's examples in turn when it has some, else
 * random values (uniform, which is rarely a realistic row).
 */
export function rowValues(model, input, i) {
  const examples = model.examples || [];
  if (examples.length) return examples[i % examples.length].inputs[input.name];
  return Array.from({ length: rowSize(input) }, () => randomValue(input.datatype));
}

/** A /v1/jobs body of `rows` rows for every input of `model` (see `rowValues`). */
export function rowsRequest(model, rows) {
  return {
    model: model.name,
    inputs: inputsOf(model).map((input) => {
      const size = rowSize(input);
      const data = new Array(rows * size);
      for (let r = 0; r < rows; r += 1) {
        const values = rowValues(model, input, r);
        for (let k = 0; k < size; k += 1) data[r * size + k] = values[k];
      }
      return { name: input.name, datatype: input.datatype, shape: [rows, ...rowShape(input)], data };
    }),
  };
}
