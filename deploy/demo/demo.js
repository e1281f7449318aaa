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
  const response = await fetch(path, body === undefined ? {} : posting(body));
  const payload = await jsonOf(response);
  if (!response.ok) throw new Error(errorMessage(payload.detail, response.status));
  return payload;
}

function posting(body) {
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

async function jsonOf(response) {
  try {
    return await response.json();
  } catch {
    return { detail: response.statusText || "the service did not answer with JSON" };
  }
}

// Posts body to path and calls onEvent with the data of each server-sent event as it arrives; a
// refusal (any status but 200) throws its message, as request does.
async function streamEvents(path, body, onEvent) {
  const response = await fetch(path, posting(body));
  if (!response.ok) throw new Error(errorMessage((await jsonOf(response)).detail, response.status));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice("data: ".length)));
      }
    }
  }
}

function numberOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

// The request body without its empty fields: the service then uses its defaults.
function withoutEmpty(body) {
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== null));
}

function predictPath(model) {
  return `/v1/models/${encodeURIComponent(model.name)}/predict`;
}

// A form whose submit posts body() to the model and draws the answer with show(answer, sent); errors
// appear as messages, those body() throws (input the page can check itself) before anything is sent.
function modelForm(model, fields, body, show, submit = "Run") {
  return submitForm(fields, submit, async (result) => {
    const sent = withoutEmpty(body());
    result.replaceChildren(element("p", { class: "status", text: "Running…" }));
    result.replaceChildren(show(await request(predictPath(model), sent), sent));
  });
}

// A form whose answer streams in: each event's text is added to the answer as it arrives, which is
// marked "done" once the stream has ended.
function streamedForm(model, fields, body) {
  return submitForm(fields, "Run", async (result) => {
    const sent = { ...withoutEmpty(body()), stream: true };
    const answer = element("p", { class: "continuation" });
    result.replaceChildren(answer);
    await streamEvents(predictPath(model), sent, (data) => {
      if ("error" in data) throw new Error(data.error);
      answer.textContent += data.delta;
    });
    answer.classList.add("done");
  });
}

function submitForm(fields, submit, run) {
  const result = element("div", { class: "result", "aria-live": "polite" });
  // novalidate: the service checks every field and its message says what to change.
  const node = element("form", { novalidate: "" }, ...fields, element("button", { type: "submit", text: submit }));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await run(result);
    } catch (error) {
      result.replaceChildren(element("p", { class: "error", text: error.message }));
    }
  });
  return [node, result];
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
  // The answer is the prompt, as the model's tokenizer reads it, and its continuation, as it is made.
  return streamedForm(model, fields, body);
}

// Forecasting: a window pasted as CSV, one row per line, oldest first; the answer drawn as an SVG chart.
const SVG = "http://www.w3.org/2000/svg";
const SERIES_COLORS = { history: "#0969da", forecast: "#cf222e" };

function svgElement(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function isNumber(field) {
  return field !== "" && Number.isFinite(Number(field));
}

// CSV text -> the window (input_length rows of one number per column), or an Error that says which
// line is wrong. A first line without numbers is a header: when it names every column of the model,
// the columns are read by name; otherwise by position, after a first (date) column of non-numbers.
function parseWindow(text, model) {
  const { columns, input_length: length } = model;
  const shape = `${length} rows of ${columns.length} values (${columns.join(", ")})`;
  const lines = text.split(/\r?\n/)
    .map((line, index) => ({ number: index + 1, fields: line.split(/[,\t]/).map((field) => field.trim()) }))
    .filter((line) => line.fields.some((field) => field !== ""));
  let positions = null;
  const header = lines.length && !lines[0].fields.some(isNumber) ? lines.shift().fields : null;
  if (header && columns.every((column) => header.includes(column))) {
    positions = columns.map((column) => header.indexOf(column));
  }
  if (lines.length !== length) {
    const rows = `${lines.length} row${lines.length === 1 ? "" : "s"}${header ? " after its header line" : ""}`;
    throw new Error(`the window has ${rows}; this model reads ${shape}`);
  }
  if (positions === null) {
    const dated = lines.every((line) => line.fields.length === columns.length + 1 && !isNumber(line.fields[0]));
    const offset = dated ? 1 : 0;
    const wrong = lines.find((line) => line.fields.length !== columns.length + offset);
    if (wrong) {
      const count = `${wrong.fields.length} value${wrong.fields.length === 1 ? "" : "s"}`;
      throw new Error(`line ${wrong.number} has ${count}; this model reads ${shape}`);
    }
    positions = columns.map((_, index) => index + offset);
  }
  return lines.map((line) => positions.map((position, index) => {
    const field = line.fields[position] ?? "";
    if (!isNumber(field)) throw new Error(`line ${line.number}, ${columns[index]}: ${JSON.stringify(field)} is not a number`);
    return Number(field);
  }));
}

// A synthetic window of the model's shape, hourly from a made-up date: a daily sine wave and a trend per column.
function exampleWindow(model) {
  const lines = [["date", ...model.columns].join(",")];
  for (let t = 0; t < model.input_length; t += 1) {
    const date = new Date(Date.UTC(2000, 0, 1) + t * 3600e3).toISOString().slice(0, 16).replace("T", " ");
    const values = model.columns.map((_, c) => 10 + 5 * c + (2 + c) * Math.sin((2 * Math.PI * t) / 24 + c) + 0.05 * (c + 1) * t);
    lines.push([date, ...values.map((value) => value.toFixed(3))].join(","));
  }
  return lines.join("\n");
}

function formatValue(value) {
  return String(Number(value.toFixed(4)));
}

// One column's history and forecast as two polylines; the forecast's starts at the last value known.
function forecastChart(history, forecast, column) {
  const [width, height, left, right, top, bottom] = [640, 240, 56, 12, 12, 28];
  const values = [...history, ...forecast];
  let [low, high] = [Math.min(...values), Math.max(...values)];
  if (low === high) [low, high] = [low - 1, high + 1];
  const pad = 0.05 * (high - low);
  [low, high] = [low - pad, high + pad];
  const x = (t) => left + ((width - left - right) * t) / (values.length - 1);
  const y = (value) => top + ((height - top - bottom) * (high - value)) / (high - low);
  const points = (series, start) => series.map((value, i) => `${x(start + i).toFixed(1)},${y(value).toFixed(1)}`).join(" ");
  const now = history.length - 1;
  const tick = (atX, atY, anchor, text) => svgElement("text", { class: "tick", x: atX, y: atY, "text-anchor": anchor, text });
  const line = (name, series, start, dashes) => svgElement("polyline", {
    class: `series ${name}`, "data-series": name, fill: "none", stroke: SERIES_COLORS[name], "stroke-width": 2,
    "stroke-dasharray": dashes, points: points(series, start),
  });
  const chart = svgElement("svg", {
    class: "forecast-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${column}: history and forecast`,
  });
  chart.append(
    svgElement("rect", { class: "frame", x: left, y: top, width: width - left - right, height: height - top - bottom }),
    svgElement("line", { class: "now", x1: x(now), x2: x(now), y1: top, y2: height - bottom }),
    tick(left - 6, top + 4, "end", String(Number(high.toPrecision(4)))),
    tick(left - 6, height - bottom, "end", String(Number(low.toPrecision(4)))),
    tick(left, height - 8, "start", `t-${now}`),
    tick(x(now), height - 8, "middle", "now"),
    tick(width - right, height - 8, "end", `t+${forecast.length}`),
    line("history", history, 0, "none"),
    line("forecast", [history[now], ...forecast], now, "6 3"),
  );
  forecast.forEach((value, i) => {
    const point = svgElement("circle", { cx: x(now + 1 + i), cy: y(value), r: 3, fill: SERIES_COLORS.forecast });
    point.append(svgElement("title", { text: `t+${i + 1}: ${formatValue(value)}` }));
    chart.append(point);
  });
  return chart;
}

// Every column's forecast, one row per step; the column drawn is marked.
function forecastTable(columns, forecast, column) {
  const picked = (name) => (name === column ? { class: "picked" } : {});
  const head = element("tr", {}, element("th", { scope: "col", text: "step" }));
  for (const name of columns) head.append(element("th", { scope: "col", ...picked(name), text: name }));
  const body = element("tbody");
  forecast.forEach((row, step) => {
    const line = element("tr", {}, element("th", { scope: "row", text: `t+${step + 1}` }));
    row.forEach((value, index) => line.append(element("td", { ...picked(columns[index]), text: formatValue(value) })));
    body.append(line);
  });
  return element("table", { class: "forecast" }, element("thead", {}, head), body);
}

function forecasterForm(model) {
  const { columns, input_length: length, horizon } = model;
  const options = columns.map((name) => element("option", { value: name, text: name }));
  const column = element("select", { name: "column" }, ...options);
  column.value = columns.includes("OT") ? "OT" : columns[columns.length - 1];
  const series = element("textarea", {
    name: "series", class: "csv", rows: Math.min(length + 2, 12), spellcheck: "false",
    placeholder: `${columns.join(",")}\n…`,
  });
  const hint = element("p", {
    class: "hint",
    text: `Paste ${length} rows of ${columns.length} comma-separated values (${columns.join(", ")}), one row per line, `
      + `oldest first; a header line and a first date column are skipped. The model forecasts the next ${horizon} rows.`,
  });
  const example = element("button", { type: "button", name: "example", text: "Example" });
  example.addEventListener("click", () => { series.value = exampleWindow(model); });
  // The column picked is drawn, also in the answer already shown.
  let redraw = () => {};
  column.addEventListener("change", () => redraw());
  const fields = [hint, series, labelled("column", column), example];
  const body = () => ({ series: [parseWindow(series.value, model)] });
  return modelForm(model, fields, body, (answer, sent) => {
    const rows = sent.series[0];
    const { columns: names, forecast } = answer.predictions[0];
    const view = element("div", { class: "forecast-view" });
    redraw = () => {
      const index = Math.max(names.indexOf(column.value), 0);
      const legend = element("div", { class: "legend" });
      for (const [name, color] of Object.entries(SERIES_COLORS)) {
        const key = element("span", { class: "series-key", "data-series": name, text: `${names[index]} ${name}` });
        key.style.borderColor = color;
        legend.append(key);
      }
      const chart = forecastChart(rows.map((row) => row[index]), forecast.map((row) => row[index]), names[index]);
      view.replaceChildren(chart, legend, forecastTable(names, forecast, names[index]));
    };
    redraw();
    return view;
  }, "Forecast");
}

const FORMS = {
  classification: classifierForm,
  tagging: taggerForm,
  translation: translatorForm,
  language_model: languageModelForm,
  forecasting: forecasterForm,
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
