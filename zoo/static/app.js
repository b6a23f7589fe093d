// The attention explorer: POST /translate with every layer's and head's weights, draw one
// (layer, head) panel as a table: source tokens across, target tokens down, one cell a weight.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;
let response = null;

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

async function loadHealth() {
  health = await (await fetch("/health")).json();
  $("model").textContent = `model: ${health.model} (step ${health.step})` +
    (health.has_attention ? "" : " — no attention");
  for (const k of health.beam_sizes) option($("beam"), k, k === 1 ? "greedy" : `beam search, ${k} beams`);
}

function panel(weights, layer, head) {
  // weights: L × N × T × S; head "mean" averages the layer's heads.
  const heads = weights[layer];
  if (head !== "mean") return heads[Number(head)];
  return heads[0].map((row, t) => row.map((_, s) => heads.reduce((sum, h) => sum + h[t][s], 0) / heads.length));
}

function draw() {
  const i = 0;
  const src = response.source_tokens[i], tgt = response.tokens[i];
  const weights = panel(response.weights[i], Number($("layer").value), $("head").value);
  const table = $("heatmap");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const s of src) {
    const th = document.createElement("th");
    th.textContent = s;
    head.appendChild(th);
  }
  const body = table.createTBody();
  const max = Math.max(1e-9, ...weights.flat());
  tgt.forEach((t, row) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.textContent = t;
    tr.appendChild(th);
    src.forEach((s, col) => {
      const w = weights[row][col];
      const td = tr.insertCell();
      td.dataset.weight = String(w);
      td.title = `${t} ← ${s}: ${w.toFixed(4)}`;
      td.style.background = `rgba(20, 70, 160, ${(w / max).toFixed(3)})`;
      td.addEventListener("mouseenter", () => { $("hover").textContent = td.title; });
    });
  });
}

function showResult() {
  $("translation").textContent = response.translations[0];
  $("result").hidden = false;
  const attends = response.has_attention;
  $("no-attention").hidden = attends;
  $("panel").hidden = !attends;
  $("pickers").hidden = !attends;
  if (!attends) {
    $("no-attention").textContent = `${response.model} has no attention: its decoder reads one fixed ` +
      "summary of the source, so there are no weights to draw.";
    return;
  }
  const w = response.weights[0];
  const layers = w.length, heads = w[0].length;
  $("layer").replaceChildren();
  for (let l = 0; l < layers; l++) option($("layer"), l, `layer ${l + 1} of ${layers}`);
  $("layer").value = layers - 1;
  $("head").replaceChildren();
  option($("head"), "mean", heads > 1 ? `mean of ${heads} heads` : "one head");
  if (heads > 1) for (let h = 0; h < heads; h++) option($("head"), h, `head ${h + 1}`);
  $("layer").disabled = layers === 1;
  $("head").disabled = heads === 1;
  draw();
}

async function submit(event) {
  event.preventDefault();
  $("error").hidden = true;
  $("submit").disabled = true;
  try {
    const r = await fetch("/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sentences: [$("sentence").value], beam_size: Number($("beam").value), all_heads: true }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    response = body;
    showResult();
  } catch (e) {
    $("error").textContent = e.message;
    $("error").hidden = false;
  } finally {
    $("submit").disabled = false;
  }
}

$("form").addEventListener("submit", submit);
$("examples").addEventListener("change", () => { if ($("examples").value) $("sentence").value = $("examples").value; });
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
loadHealth().catch((e) => { $("model").textContent = `cannot reach the server: ${e.message}`; });
