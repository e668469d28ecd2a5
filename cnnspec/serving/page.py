"""The page at `/`: drop or choose an image and see every model's top 5.

The page speaks the same protocol as any client: it sends the file as the BYTES input `image` with Triton's
binary tensor extension and asks for the classification extension's top 5 ("score:index:label" strings).
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnspec serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
#drop.over { background: #eef; }
#preview { max-height: 8rem; image-rendering: pixelated; margin-top: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; min-width: 20rem; }
td, th { border-bottom: 1px solid #ddd; padding: .25rem .75rem; text-align: left; }
td.score { text-align: right; font-variant-numeric: tabular-nums; }
.error { color: #b00; }
</style></head>
<body>
<h1>cnnspec serve</h1>
<p>Models: <b id="models">__MODELS_TEXT__</b></p>
__KEY_FIELD__
<div id="drop">Drop an image here or <label><u>choose a file</u>
<input id="file" type="file" accept="image/*" hidden></label><br><img id="preview" alt="" hidden></div>
<div id="results"></div>
<script>
const MODELS = __MODELS_JSON__;
const drop = document.getElementById("drop");
const input = document.getElementById("file");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]); });
input.addEventListener("change", () => { if (input.files.length) classify(input.files[0]); });

function requestBody(bytes) {
  // Triton's binary tensor extension: JSON header, then the BYTES element as <uint32 LE length><bytes>.
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: "image", datatype: "BYTES", shape: [1], parameters: { binary_data_size: bytes.length + 4 } }],
    outputs: [{ name: "output", parameters: { classification: 5, binary_data: false } }],
  }));
  const body = new Uint8Array(header.length + 4 + bytes.length);
  body.set(header, 0);
  new DataView(body.buffer).setUint32(header.length, bytes.length, true);
  body.set(bytes, header.length + 4);
  return [body, header.length];
}

async function classify(file) {
  const preview = document.getElementById("preview");
  preview.src = URL.createObjectURL(file); preview.hidden = false;
  const bytes = new Uint8Array(await file.arrayBuffer());
  const [body, headerLength] = requestBody(bytes);
  const results = document.getElementById("results");
  results.replaceChildren();
  const keyField = document.getElementById("key");
  for (const model of MODELS) {
    const section = document.createElement("section");
    const title = document.createElement("h2"); title.textContent = model; section.append(title);
    results.append(section);
    const headers = { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": headerLength };
    if (keyField && keyField.value) headers["Authorization"] = "Bearer " + keyField.value;
    try {
      const response = await fetch(`/v2/models/${encodeURIComponent(model)}/infer`,
                                   { method: "POST", headers, body });
      const doc = await response.json();
      if (!response.ok) throw new Error(doc.error || response.statusText);
      section.append(table(doc.outputs[0].data));
    } catch (err) {
      const p = document.createElement("p"); p.className = "error"; p.textContent = "error: " + err.message;
      section.append(p);
    }
  }
}

function table(entries) {
  const t = document.createElement("table");
  t.innerHTML = "<thead><tr><th>label</th><th>score</th></tr></thead>";
  const body = document.createElement("tbody");
  entries.forEach((entry, rank) => {
    const [score, index, ...rest] = entry.split(":");
    const row = body.insertRow();
    const label = row.insertCell(); label.textContent = rest.join(":");
    label.className = "label"; label.dataset.rank = rank; label.dataset.index = index;
    const s = row.insertCell(); s.className = "score"; s.textContent = Number(score).toFixed(4);
  });
  t.append(body);
  return t;
}
</script></body></html>
"""

_KEY_FIELD = '<p><label>API key <input id="key" type="password" autocomplete="off" size="40"></label></p>'


def render_page(models: list[str], needs_key: bool) -> str:
    # json.dumps inside <script>: "</" is escaped so a model name cannot close the script element.
    as_json = json.dumps(models).replace("</", "<\\/")
    return (
        _PAGE.replace("__MODELS_JSON__", as_json)
        .replace("__MODELS_TEXT__", html.escape(", ".join(models)))
        .replace("__KEY_FIELD__", _KEY_FIELD if needs_key else "")
    )
