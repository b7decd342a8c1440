// "Try a model": a form built from any model's signature (its fields named after the model's
// features when it has them), filled from the example rows the model ships, or a JSON editor.

import { statusBadge } from "./jobs.js";
import { renderOutputs } from "./outputs.js";
import { inputsOf, rowShape, rowSize, rowValues, zero } from "./requests.js";
import { el, fill } from "./util.js";

const NUMERIC = /^(FP|INT|UINT)/;
const FORM_LIMIT = 32; // inputs with more values per row get a JSON field
const RANDOM = "random"; // the example select's last choice

function boxed(input) {
  return rowSize(input) <= FORM_LIMIT && (NUMERIC.test(input.datatype) || input.datatype === "BOOL");
}

export class TryPanel {
  constructor(root, { submit, waitFor, models }) {
    this.root = root;
    this.submit = submit;
    this.waitFor = waitFor;
    this.models = models; // () => Map name -> entry
    this.select = root.querySelector("#try-model");
    this.example = root.querySelector("#try-example");
    this.fields = root.querySelector("#try-fields");
    this.json = root.querySelector("#try-json");
    this.result = root.querySelector("#try-result");
    this.modeButtons = root.querySelectorAll("[data-mode]");
    this.mode = "form";
    this.controls = new Map(); // input name -> {get: () => flat values of one row, set(values)}
    this.select.addEventListener("change", () => this.build());
    this.example.addEventListener("change", () => this.fillExample());
    for (const b of this.modeButtons) b.addEventListener("click", () => this.setMode(b.dataset.mode));
    root.querySelector("#try-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.run();
    });
  }

  /** Refresh the model list (keeping the choice). */
  setModels(models) {
    const names = models.map((m) => m.name);
    const current = this.select.value;
    const same = names.length === this.select.options.length && names.every((n, i) => this.select.options[i].value === n);
    this.select.disabled = false;
    if (!same) {
      fill(this.select, names.map((n) => el("option", { value: n }, n)));
      const preferred = names.includes(current) ? current : names.includes("iris") ? "iris" : names[0];
      if (preferred) this.select.value = preferred;
    }
    const model = this.model();
    if (model?.name !== this.built?.name || (model && JSON.stringify(model.examples) !== this.builtExamples)) this.build();
  }

  model() {
    return this.models().get(this.select.value);
  }

  build() {
    const model = this.model();
    this.built = model;
    this.builtExamples = JSON.stringify(model?.examples);
    this.controls.clear();
    fill(this.result);
    if (!model) {
      fill(this.fields);
      fill(this.example);
      return;
    }
    const examples = model.examples || [];
    fill(
      this.example,
      examples.map((e, i) => el("option", { value: String(i) }, `${e.name} (example ${i + 1})`)),
      el("option", { value: RANDOM }, "random values"),
    );
    const inputs = inputsOf(model);
    fill(
      this.fields,
      inputs.map((input, i) => this._fieldset(input, i === 0 ? model.features : null)),
    );
    this.fillExample();
  }

  _fieldset(input, features) {
    const size = rowSize(input);
    const legend = el("legend", {}, input.name, " ", el("span", { class: "muted mono small" }, `${input.datatype} [${input.shape.join(", ")}]`));
    if (boxed(input)) {
      const boxes = Array.from({ length: size }, (_, i) => {
        const id = `f-${input.name}-${i}`;
        const box =
          input.datatype === "BOOL"
            ? el("input", { type: "checkbox", id })
            : el("input", { type: "number", id, step: input.datatype.startsWith("FP") ? "any" : "1", value: "0", inputmode: "decimal", required: true });
        return { id, box, name: features?.length === size ? features[i] : `[${i}]` };
      });
      const bool = input.datatype === "BOOL";
      this.controls.set(input.name, {
        get: () => boxes.map(({ box }) => (bool ? box.checked : Number(box.value))),
        set: (values) =>
          boxes.forEach(({ box }, i) => {
            if (bool) box.checked = Boolean(values[i]);
            else box.value = String(values[i]);
          }),
      });
      return el(
        "fieldset",
        { class: "grid-fields" },
        legend,
        boxes.map(({ id, box, name }) => el("label", { for: id, class: "field" }, el("span", { class: "small muted", title: name }, name), box)),
      );
    }
    const id = `f-${input.name}`;
    const area = el("textarea", { id, rows: 3, class: "mono", spellcheck: "false" });
    area.value = JSON.stringify(Array(size).fill(zero(input.datatype)));
    this.controls.set(input.name, {
      get: () => {
        const values = JSON.parse(area.value);
        if (!Array.isArray(values)) throw new Error(`${input.name}: give a JSON array of ${size} values`);
        return values.flat(Infinity);
      },
      set: (values) => {
        area.value = JSON.stringify(values);
      },
    });
    return el("fieldset", {}, legend, el("label", { for: id, class: "small muted" }, `one row: a JSON array of ${size} values`), area);
  }

  /** Put the chosen example row (or random values) into the form. */
  fillExample() {
    const model = this.model();
    if (!model) return;
    const choice = this.example.value;
    const randomModel = { ...model, examples: [] };
    for (const input of inputsOf(model)) {
      const values = choice === RANDOM ? rowValues(randomModel, input, 0) : rowValues(model, input, Number(choice));
      this.controls.get(input.name).set(values);
    }
    this._syncJson();
  }

  _formRequest() {
    const model = this.model();
    return {
      model: model.name,
      inputs: inputsOf(model).map((input) => ({
        name: input.name,
        datatype: input.datatype,
        shape: [1, ...rowShape(input)],
        data: this.controls.get(input.name).get(),
      })),
    };
  }

  _syncJson() {
    try {
      this.json.value = JSON.stringify(this._formRequest(), null, 1);
    } catch {
      // an unfinished field: keep the editor as it is
    }
  }

  setMode(mode) {
    if (mode === "json") this._syncJson();
    this.mode = mode;
    for (const b of this.modeButtons) b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
    this.fields.hidden = mode !== "form";
    this.json.parentElement.hidden = mode !== "json";
  }

  async run() {
    const model = this.model();
    if (!model) return;
    let body;
    try {
      body = this.mode === "json" ? JSON.parse(this.json.value) : this._formRequest();
    } catch (exc) {
      fill(this.result, el("p", { class: "error-text" }, `Not a valid request: ${exc.message}`));
      return;
    }
    fill(this.result, el("p", { class: "muted" }, "Running…"));
    try {
      const job = await this.submit(body);
      this.result.dataset.job = job.id;
      const done = await this.waitFor(job.id);
      if (this.result.dataset.job !== done.id) return;
      const labels = this.models().get(done.model)?.labels;
      fill(
        this.result,
        el("p", {}, statusBadge(done.status), " ", el("span", { class: "mono small" }, done.id)),
        done.status === "succeeded" ? renderOutputs(done.outputs, labels) : el("p", { class: "error-text" }, done.error ?? done.reason ?? done.status),
      );
    } catch (exc) {
      fill(this.result, el("p", { class: "error-text" }, exc.message));
    }
  }
}
