// The demo page: one form per model served, drawn from GET /v1/models, each posting to the model's
// predict endpoint. Plain DOM calls, no framework and no build step; text from users and models is
// only ever set as textContent, never parsed as HTML.
"use strict";

const PALETTE = ["#ffd8a8", "#b2f2bb", "#a5d8ff", "#eebefa", "#ffec99", "#ffc9c9", "#c5f6fa", "#d0bfff"];

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function errorMessage(detail, status) {
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc || []).slice(1).join(".") || "request"}: ${item.msg}`).join("; ");
  }
  return `${status}: ${detail}`;
}

async function request(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  let payload;
  try {
    payload = await response.json();
  } catch {
    payload = { detail: response.statusText || "the service did not answer with JSON" };
  }
  if (!response.ok) throw new Error(errorMessage(payload.detail, response.status));
  return payload;
}

function numberOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

// The request body without its empty fields: the service then uses its defaults.
function withoutEmpty(body) {
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== null));
}

// A form whose submit posts body() to the model and draws the answer with show(); errors appear as messages.
function modelForm(model, fields, body, show) {
  const result = element("div", { class: "result", "aria-live": "polite" });
  // novalidate: the service checks every field and its message says what to change.
  const form = element("form", { novalidate: "" }, ...fields, element("button", { type: "submit", text: "Run" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren(element("p", { class: "status", text: "Running…" }));
    try {
      const path = `/v1/models/${encodeURIComponent(model.name)}/predict`;
      const answer = await request(path, withoutEmpty(body()));
      result.replaceChildren(show(answer));
    } catch (error) {
      result.replaceChildren(element("p", { class: "error", text: error.message }));
    }
  });
  return [form, result];
}

function labelled(text, input) {
  return element("label", {}, text, input);
}

function classifierForm(model) {
  const text = element("textarea", { name: "text", rows: 3, placeholder: "A text to classify" });
  return modelForm(model, [text], () => ({ texts: [text.value] }), (answer) => {
    const prediction = answer.predictions[0];
    const bars = element("div", { class: "bars" });
    for (const [label, probability] of Object.entries(prediction.probabilities)) {
      const bar = element("div", { class: "bar" });
      bar.style.width = `${(100 * probability).toFixed(1)}%`;
      const row = element(
        "div", { class: label === prediction.label ? "bar-row best" : "bar-row", "data-label": label },
        element("span", { class: "bar-label", text: label }),
        element("div", { class: "bar-track" }, bar),
        element("span", { class: "bar-value", text: probability.toFixed(3) }),
      );
      bars.append(row);
    }
    return bars;
  });
}

// Entity types of a tag set: "B-PER"/"I-PER" (BIO, BIOES) -> "PER"; a tag without a prefix is its own type.
function tagType(tag) {
  const match = /^([BIES])-(.+)$/.exec(tag);
  return match ? { prefix: match[1], type: match[2] } : { prefix: "", type: tag };
}

function typeColors(labels) {
  const types = [...new Set(labels.filter((tag) => tag !== "O").map((tag) => tagType(tag).type))];
  return new Map(types.map((type, index) => [type, PALETTE[index % PALETTE.length]]));
}

// Words and their tags -> runs [{type, words}], type null outside entities.
function entityRuns(words, tags) {
  const runs = [];
  words.forEach((word, index) => {
    const { prefix, type } = tags[index] === "O" ? { prefix: "", type: null } : tagType(tags[index]);
    const last = runs[runs.length - 1];
    const continues = last && last.type === type && (type === null || prefix === "I" || prefix === "E");
    if (continues) last.words.push(word);
    else runs.push({ type, words: [word] });
  });
  return runs;
}

function taggerForm(model) {
  const colors = typeColors(model.labels);
  const sentence = element("input", { type: "text", name: "sentence", placeholder: "A sentence to tag" });
  return modelForm(model, [sentence], () => ({ sentences: [sentence.value] }), (answer) => {
    const { words, tags } = answer.predictions[0];
    const text = element("p", { class: "sentence" });
    for (const run of entityRuns(words, tags)) {
      if (run.type === null) {
        text.append(` ${run.words.join(" ")} `);
        continue;
      }
      const mark = element(
        "mark", { class: "entity", "data-type": run.type },
        run.words.join(" "), element("span", { class: "type", text: run.type }),
      );
      mark.style.background = colors.get(run.type) || "#eee";
      text.append(" ", mark, " ");
    }
    const legend = element("div", { class: "legend" });
    for (const [type, color] of colors) {
      const key = element("span", { text: type, "data-type": type });
      key.style.background = color;
      legend.append(key);
    }
    return element("div", {}, text, legend);
  });
}

function heatmap(sourceTokens, targetTokens, weights) {
  const head = element("tr", {}, element("th"));
  for (const token of sourceTokens) head.append(element("th", { scope: "col", text: token }));
  const body = element("tbody");
  targetTokens.forEach((token, row) => {
    const line = element("tr", {}, element("th", { scope: "row", text: token }));
    for (const weight of weights[row]) {
      const cell = element("td", { title: weight.toFixed(3) });
      cell.style.background = `rgba(9, 105, 218, ${weight})`;
      line.append(cell);
    }
    body.append(line);
  });
  return element("table", { class: "heatmap" }, element("thead", {}, head), body);
}

function translatorForm(model) {
  const text = element("textarea", { name: "text", rows: 2, placeholder: "A sentence to translate" });
  const beam = element("input", { type: "number", name: "beam_size", min: 1, max: 16, value: model.beam_size });
  const fields = [text, labelled("beam size", beam)];
  const attention = element("input", { type: "checkbox", name: "attention" });
  if (model.attention) {
    attention.checked = true;
    fields.push(labelled("attention", attention));
  }
  const body = () => ({ texts: [text.value], beam_size: numberOrNull(beam), attention: attention.checked });
  return modelForm(model, fields, body, (answer) => {
    const result = answer.predictions[0];
    if (!result.attention) return element("p", { class: "translation", text: result.translation });
    return element(
      "div", {}, element("p", { class: "translation", text: result.translation }),
      heatmap(result.source_tokens, result.target_tokens, result.attention),
    );
  });
}

function languageModelForm(model) {
  const prompt = element("input", { type: "text", name: "prompt", placeholder: "A prompt (empty: a new sentence)" });
  const temperature = element("input", { type: "number", name: "temperature", min: 0, max: 10, step: 0.1, value: 1 });
  const topK = element("input", { type: "number", name: "top_k", min: 1, placeholder: "all" });
  const maxTokens = element("input", { type: "number", name: "max_new_tokens", min: 1, max: 1000, value: 30 });
  const fields = [prompt, labelled("temperature", temperature), labelled("top-k", topK), labelled("max tokens", maxTokens)];
  const body = () => ({
    prompts: [prompt.value],
    temperature: numberOrNull(temperature),
    top_k: numberOrNull(topK),
    max_new_tokens: numberOrNull(maxTokens),
  });
  // The answer is the prompt, as the model's tokenizer reads it, and its continuation.
  return modelForm(model, fields, body, (answer) => element("p", { class: "continuation", text: answer.predictions[0].continuation }));
}

const FORMS = {
  classification: classifierForm,
  tagging: taggerForm,
  translation: translatorForm,
  language_model: languageModelForm,
};

async function main() {
  const container = document.getElementById("models");
  try {
    const { models } = await request("/v1/models");
    container.replaceChildren();
    for (const model of models) {
      const form = FORMS[model.task];
      if (!form) continue;
      const title = element("h2", {}, model.name, element("span", { class: "task", text: model.task }));
      container.append(element("section", { id: `model-${model.name}`, "data-task": model.task }, title, ...form(model)));
    }
  } catch (error) {
    container.replaceChildren();
    const message = document.getElementById("page-error");
    message.textContent = `The models could not be listed: ${error.message}`;
    message.hidden = false;
  }
}

main();
