// The pool view: GET /api/pool, rendered as two tables. No framework, no inline script
// (the CSP forbids it), text only through textContent (nothing from the API is HTML).
"use strict";

function cell(row, text, title) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (title) td.title = title;
  row.appendChild(td);
}

// KALE as people read it; the exact amount, to the stroop, on hover.
function kale(amount) {
  const [whole, frac] = amount.kale.split(".");
  const trimmed = frac.replace(/0+$/, "");
  return [trimmed ? `${whole}.${trimmed}` : whole, `${amount.kale} KALE (${amount.stroops} stroops)`];
}

function fill(id, rows, columns) {
  const body = document.getElementById(id);
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    for (const column of columns) {
      const value = column(item);
      if (Array.isArray(value)) cell(tr, value[0], value[1]);
      else cell(tr, value);
    }
    body.appendChild(tr);
  }
}

async function load() {
  const summary = document.getElementById("summary");
  try {
    const response = await fetch("/api/pool", { headers: { Accept: "application/json" } });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    summary.textContent = `Block ${data.current_block_index} · ${data.poolers.length} poolers · ${data.farmers_active} active farmers`;
    fill("poolers", data.poolers, [
      (p) => p.name,
      (p) => `${p.current_farmers} / ${p.max_farmers}`,
      (p) => p.capacity,
      (p) => p.participation.blocks,
      (p) => p.participation.plants_succeeded,
      (p) => p.participation.works_succeeded,
      (p) => p.participation.harvests_succeeded,
      (p) => kale(p.participation.rewards),
    ]);
    fill("blocks", data.blocks, [
      (b) => b.block_index,
      (b) => b.status,
      (b) => b.farmers,
      (b) => b.planted,
      (b) => b.worked,
      (b) => b.harvested,
      (b) => kale(b.rewards),
      (b) => b.best_zeros,
    ]);
  } catch (err) {
    summary.textContent = `The pool cannot be shown now: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  load();
  setInterval(load, 10000);
});
