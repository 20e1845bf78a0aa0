// The farmers' page: the pool view, joining, funding, the dashboard, withdrawing and
// leaving. No framework, no inline script (the CSP forbids it), text only through
// textContent (nothing from the API is treated as HTML). Views are chosen by the URL's
// fragment (#pool, #join, #signin, #farm, #farmer/ID[/funding|/withdraw|/leave]).
// Every write is an action the farmer signs in their own wallet (Freighter when the
// browser has it, otherwise any SEP-53 signer and a pasted signature): the page never
// sees a secret key.
"use strict";

const STROOPS_PER_KALE = 10000000n;
const CSRF_KEY = "kale-pool-csrf";
const POLL_FUNDING_MS = 3000;
const POLL_DASHBOARD_MS = 5000;
const POLL_POOL_MS = 10000;

// ---- small helpers -------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function setStatus(id, text, kind) {
  const node = $(id);
  node.textContent = text || "";
  node.dataset.kind = kind || "error";
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One call of the JSON API; the server's own sentence on failure.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const csrf = sessionStorage.getItem(CSRF_KEY);
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "the pool's web server cannot be reached; check your connection");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

// An API amount ({stroops, kale} or {stroops, xlm}, or stroops as a string) as
// [short text, exact title]: both assets count 10^7 stroops to the unit.
function kale(amount, unit = "KALE") {
  if (amount === undefined || amount === null) return ["–", ""];
  const stroops = typeof amount === "object" ? String(amount.stroops) : String(amount);
  const given = typeof amount === "object" ? amount.kale || amount.xlm : null;
  const exact = given || stroopsToKale(stroops);
  const [whole, frac = ""] = exact.split(".");
  const trimmed = frac.replace(/0+$/, "");
  return [trimmed ? `${whole}.${trimmed}` : whole, `${exact} ${unit} (${stroops} stroops)`];
}

function stroopsToKale(stroops) {
  const value = BigInt(stroops);
  const sign = value < 0n ? "-" : "";
  const abs = value < 0n ? -value : value;
  const frac = String(abs % STROOPS_PER_KALE).padStart(7, "0");
  return `${sign}${abs / STROOPS_PER_KALE}.${frac}`;
}

// "1.5" KALE as "15000000" stroops, exactly (no floating point); null when not an amount.
function kaleToStroops(text) {
  const match = /^\s*(\d{1,12})(?:[.,](\d{0,7}))?\s*$/.exec(text);
  if (!match) return null;
  const stroops = BigInt(match[1]) * STROOPS_PER_KALE + BigInt((match[2] || "").padEnd(7, "0"));
  return String(stroops);
}

function amountNode(amount, unit = "KALE") {
  const [text, title] = kale(amount, unit);
  return el("span", text, title ? { title, class: "amount" } : { class: "amount" });
}

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value);
  else if (Array.isArray(value)) {
    td.textContent = value[0];
    if (value[1]) td.title = value[1];
  } else td.textContent = value === undefined || value === null ? "–" : String(value);
  row.appendChild(td);
}

function fill(id, rows, columns, empty) {
  const body = $(id);
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    for (const column of columns) cell(tr, column(item));
    body.appendChild(tr);
  }
  if (!rows.length && empty) {
    const tr = document.createElement("tr");
    const td = el("td", empty, { colspan: String(columns.length), class: "empty" });
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function facts(id, pairs) {
  const dl = $(id);
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    dl.appendChild(el("dt", term));
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = value === undefined || value === null ? "–" : String(value);
    dl.appendChild(dd);
  }
}

const yes = (flag) => (flag ? "yes" : "no");
const percent = (bps) => `${(Number(bps) / 100).toFixed(2).replace(/\.?0+$/, "")} %`;
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// ---- SVG bar chart -------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

// Bars (oldest first) of [label, stroops as string]; each bar's <title> is its exact value.
function barChart(figure, title, bars) {
  figure.replaceChildren();
  if (!bars.length) {
    figure.appendChild(el("figcaption", `${title}: no blocks yet.`));
    return;
  }
  const width = 600;
  const height = 160;
  const pad = 24;
  const values = bars.map(([, v]) => Number(BigInt(v || "0")));
  const highest = Math.max(0, ...values);
  const max = Math.max(1, highest);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${bars.length} blocks`);
  svg.setAttribute("class", "bars");
  const axis = document.createElementNS(SVG, "line");
  for (const [k, v] of [["x1", pad], ["x2", width], ["y1", height - pad], ["y2", height - pad]]) {
    axis.setAttribute(k, String(v));
  }
  axis.setAttribute("class", "axis");
  svg.appendChild(axis);
  const step = bars.length ? (width - pad) / bars.length : 0;
  bars.forEach(([label, v], i) => {
    const value = values[i];
    const h = Math.round(((height - 2 * pad) * value) / max);
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", String(pad + i * step + step * 0.15));
    rect.setAttribute("y", String(height - pad - h));
    rect.setAttribute("width", String(Math.max(1, step * 0.7)));
    rect.setAttribute("height", String(Math.max(h, value > 0 ? 1 : 0)));
    rect.setAttribute("class", "bar");
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = `block ${label}: ${kale(v)[1]}`;
    rect.appendChild(tip);
    svg.appendChild(rect);
    if (bars.length <= 12 || i % Math.ceil(bars.length / 12) === 0) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", String(pad + i * step + step / 2));
      text.setAttribute("y", String(height - 6));
      text.setAttribute("text-anchor", "middle");
      text.textContent = String(label);
      svg.appendChild(text);
    }
  });
  const top = document.createElementNS(SVG, "text");
  top.setAttribute("x", "2");
  top.setAttribute("y", "14");
  top.textContent = `${kale(String(highest))[0]} KALE`;
  svg.appendChild(top);
  figure.appendChild(svg);
  figure.appendChild(el("figcaption", title));
}

// ---- signing an action ---------------------------------------------------------------

function toBase64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

// Freighter's signMessage answers {signedMessage} (base64 text, or bytes in some
// versions) or {error}; older versions answer the signature itself.
async function signWithFreighter(message, address) {
  const answer = await window.freighterApi.signMessage(message, { address });
  if (answer && answer.error) throw new Error(String(answer.error.message || answer.error));
  const signed = answer && answer.signedMessage !== undefined ? answer.signedMessage : answer;
  if (typeof signed === "string") return signed;
  if (signed && signed.data) return toBase64(signed.data);
  if (signed instanceof Uint8Array || Array.isArray(signed)) return toBase64(signed);
  throw new Error("Freighter returned no signature");
}

// Shows `made.message` in `host` (copy button; Freighter's button when present; a field
// for a pasted signature); calls `send(signature)` until it succeeds or the farmer
// starts over. `statusId` shows each refusal in the server's words.
function askSignature(host, made, address, statusId, send) {
  const node = $("signer-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".message").textContent = made.message;
  const expires = node.querySelector(".signer-expires");
  expires.textContent = when(made.expires_at);
  expires.setAttribute("datetime", made.expires_at || "");
  const field = node.querySelector(".signer-signature");
  field.id = `${host.id}-signature`;
  const submit = async (signature) => {
    if (!signature) {
      setStatus(statusId, "Paste the signature your wallet made (base64) first.");
      field.focus();
      return;
    }
    setStatus(statusId, "Sending…", "info");
    try {
      await send(signature);
    } catch (err) {
      setStatus(statusId, err.message);
    }
  };
  node.querySelector(".signer-copy").addEventListener("click", async (event) => {
    try {
      await navigator.clipboard.writeText(made.message);
      event.target.textContent = "Copied";
    } catch (err) {
      const range = document.createRange();
      range.selectNodeContents(node.querySelector(".message"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      event.target.textContent = "Selected: copy it";
    }
  });
  const freighter = node.querySelector(".signer-freighter");
  if (window.freighterApi && typeof window.freighterApi.signMessage === "function") {
    freighter.hidden = false;
    freighter.addEventListener("click", async () => {
      try {
        const signature = await signWithFreighter(made.message, address);
        field.value = signature;
        await submit(signature);
      } catch (err) {
        setStatus(statusId, `Freighter did not sign: ${err.message}`);
      }
    });
  }
  node.querySelector(".signer-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(field.value.trim());
  });
  host.replaceChildren(node);
  node.querySelector("h3").focus();
}

// ---- views ---------------------------------------------------------------------------

let timer = null;
let poolCache = null;

function poll(fn, ms) {
  clearInterval(timer);
  fn();
  timer = setInterval(fn, ms);
}

function showView(name) {
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${name}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.dataset.nav === name || (link.dataset.nav === "farm" && !["pool", "join"].includes(name));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const heading = document.querySelector(`#view-${name} h2`);
  document.title = `${heading ? heading.textContent : "kale-pool"} · kale-pool`;
}

function needSignIn(err, statusId) {
  if (err.status === 401) {
    sessionStorage.removeItem(CSRF_KEY);
    location.hash = "#signin";
    return true;
  }
  setStatus(statusId, err.message);
  return false;
}

async function loadPool() {
  const summary = $("summary");
  try {
    const data = await api("GET", "/api/pool");
    poolCache = data;
    const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    summary.textContent = `Block ${data.current_block_index} · ${count(data.poolers.length, "pooler")} · ${count(data.farmers_active, "active farmer")}`;
    fill("poolers", data.poolers, [
      (p) => p.name,
      (p) => `${p.current_farmers} / ${p.max_farmers}`,
      (p) => p.capacity,
      (p) => p.participation.blocks,
      (p) => p.participation.plants_succeeded,
      (p) => p.participation.works_succeeded,
      (p) => p.participation.harvests_succeeded,
      (p) => successRate(p.participation),
      (p) => kale(p.participation.rewards),
    ], "No pooler yet.");
    fill("blocks", data.blocks, [
      (b) => b.block_index,
      (b) => b.status,
      (b) => b.farmers,
      (b) => b.planted,
      (b) => b.worked,
      (b) => b.harvested,
      (b) => kale(b.rewards),
      (b) => b.best_zeros,
    ], "No block farmed yet.");
    const bars = data.blocks.slice().reverse().map((b) => [b.block_index, b.rewards.stroops]);
    barChart($("blocks-chart"), "Rewards per block (KALE), oldest to newest", bars);
  } catch (err) {
    summary.textContent = `The pool cannot be shown now: ${err.message}`;
  }
}

// Harvests that succeeded of those tried (plants are tried for every farmer).
function successRate(p) {
  const tried = p.harvests_succeeded + p.harvests_failed;
  return tried ? `${Math.round((100 * p.harvests_succeeded) / tried)} %` : "–";
}

async function showJoin() {
  const select = $("join-pooler");
  try {
    const data = poolCache || (await api("GET", "/api/pool"));
    poolCache = data;
    const chosen = select.value;
    select.replaceChildren();
    for (const p of data.poolers) {
      const room = p.max_farmers - p.current_farmers;
      const option = el("option", `${p.name} (${room > 0 ? `${room} places free` : "full"})`, { value: p.pooler_id });
      if (room <= 0) option.disabled = true;
      select.appendChild(option);
    }
    if (chosen) select.value = chosen;
    if (!data.poolers.length) setStatus("join-status", "No pooler takes farmers yet; come back later.");
  } catch (err) {
    setStatus("join-status", `The poolers cannot be listed now: ${err.message}`);
  }
}

function onJoin(event) {
  event.preventDefault();
  const address = $("join-address").value.trim();
  const stakeText = $("join-stake").value.trim();
  const stake = Number(stakeText);
  if (!/^G[A-Z2-7]{55}$/.test(address)) {
    setStatus("join-status", "The payout address is a Stellar account: 56 characters starting with G.");
    $("join-address").focus();
    return;
  }
  if (stakeText === "" || !(stake >= 0 && stake <= 100)) {
    setStatus("join-status", "The stake share is a percentage from 0 to 100.");
    $("join-stake").focus();
    return;
  }
  const body = { payout_address: address, pooler_id: $("join-pooler").value, stake_bps: Math.round(stake * 100) };
  setStatus("join-status", "Asking the pool for the message to sign…", "info");
  api("POST", "/api/join/challenge", body).then(
    (made) => {
      setStatus("join-status", "");
      askSignature($("join-sign"), made, address, "join-status", async (signature) => {
        const joined = await api("POST", "/api/join", { challenge_id: made.challenge_id, signature });
        if (joined.csrf_token) sessionStorage.setItem(CSRF_KEY, joined.csrf_token);
        $("join-sign").replaceChildren();
        setStatus("join-status", `Joined: farmer ${joined.farmer_id}. Now fund it.`, "good");
        location.hash = `#farmer/${joined.farmer_id}/funding`;
      });
    },
    (err) => setStatus("join-status", err.message),
  );
}

function onSignIn(event) {
  event.preventDefault();
  const address = $("signin-address").value.trim();
  if (!/^G[A-Z2-7]{55}$/.test(address)) {
    setStatus("signin-status", "The payout address is a Stellar account: 56 characters starting with G.");
    return;
  }
  setStatus("signin-status", "Asking for the message to sign…", "info");
  api("POST", "/api/session/challenge", { address }).then(
    (made) => {
      setStatus("signin-status", "");
      askSignature($("signin-sign"), made, address, "signin-status", async (signature) => {
        const session = await api("POST", "/api/session", { challenge_id: made.challenge_id, signature });
        sessionStorage.setItem(CSRF_KEY, session.csrf_token);
        $("signin-sign").replaceChildren();
        setStatus("signin-status", "");
        location.hash = "#farm";
      });
    },
    (err) => setStatus("signin-status", err.message),
  );
}

async function showFarm() {
  try {
    const me = await api("GET", "/api/me");
    $("farm-who").textContent = `Signed in as ${me.address}`;
    const list = $("farm-list");
    list.replaceChildren();
    for (const f of me.farmers) {
      const li = document.createElement("li");
      const link = el("a", `Farmer ${f.farmer_id}`, { href: `#farmer/${f.farmer_id}` });
      li.append(link, el("span", ` · ${f.status} · stake ${percent(f.stake_bps)} · balance `), amountNode(f.balance), el("span", " KALE"));
      list.appendChild(li);
    }
    if (!me.farmers.length) list.appendChild(el("li", "No farmer pays out to this address yet: join the pool first."));
    setStatus("farm-status", "");
  } catch (err) {
    needSignIn(err, "farm-status");
  }
}

async function onSignOut() {
  try {
    await api("DELETE", "/api/session");
  } catch (err) {
    // Signed out already (an expired session): nothing to undo.
  }
  sessionStorage.removeItem(CSRF_KEY);
  location.hash = "#pool";
}

async function loadFunding(id) {
  try {
    const f = await api("GET", `/api/farmers/${encodeURIComponent(id)}`);
    const funding = f.funding || {};
    $("funding-address").textContent = f.custodial_address;
    const qr = $("funding-qr");
    const src = `/api/farmers/${encodeURIComponent(id)}/qr.svg`;
    if (qr.getAttribute("src") !== src) qr.setAttribute("src", src);
    $("funding-min-xlm").replaceChildren(amountNode(funding.min_funding_xlm, "XLM"));
    $("funding-next").textContent = funding.next_step || "";
    facts("funding-facts", [
      ["Farmer", f.status],
      ["XLM in the account", amountNode(funding.xlm_balance, "XLM")],
      ["KALE trustline", yes(funding.trustline)],
      ["KALE deposited", amountNode(funding.kale_deposited)],
    ]);
    $("funding-dashboard").setAttribute("href", `#farmer/${id}`);
    setStatus("funding-status", "");
  } catch (err) {
    needSignIn(err, "funding-status");
  }
}

function blockRows(history) {
  return history.blocks || [];
}

async function loadDashboard(id) {
  const base = `/api/farmers/${encodeURIComponent(id)}`;
  try {
    const [f, history, payouts] = await Promise.all([
      api("GET", base),
      api("GET", `${base}/history?limit=50`),
      api("GET", `${base}/payouts`),
    ]);
    const balance = f.balance || {};
    facts("dashboard-facts", [
      ["Farmer", f.farmer_id],
      ["Status", f.status],
      ["Balance", withUnit(balance.balance || balance)],
      ["Available to withdraw", withUnit(balance.available || f.available)],
      ["Stake share", percent(f.stake_bps)],
      ["Pooler", f.pooler_id],
      ["Payout address", el("code", f.payout_address, { class: "address" })],
    ]);
    const rows = blockRows(history);
    fill("history", rows, [
      (b) => b.block,
      (b) => yes(b.planted),
      (b) => kale(b.stake),
      (b) => yes(b.worked),
      (b) => b.zeros,
      (b) => yes(b.harvested),
      (b) => kale(b.reward),
      (b) => kale(b.fees),
      (b) => b.failure || "",
    ], "No block yet: your farmer plants once it is funded.");
    const bars = rows.slice().reverse().map((b) => [b.block, amountStroops(b.reward)]);
    barChart($("history-chart"), "Your reward per block (KALE), oldest to newest", bars);
    fillPayouts("dashboard-payouts", payouts);
    $("dashboard-csv").setAttribute("href", `${base}/history.csv`);
    $("dashboard-withdraw").setAttribute("href", `#farmer/${id}/withdraw`);
    $("dashboard-funding").setAttribute("href", `#farmer/${id}/funding`);
    $("dashboard-leave").setAttribute("href", `#farmer/${id}/leave`);
    setStatus("dashboard-status", "");
  } catch (err) {
    needSignIn(err, "dashboard-status");
  }
}

function amountStroops(amount) {
  if (amount === undefined || amount === null) return "0";
  return typeof amount === "object" ? String(amount.stroops) : String(amount);
}

function withUnit(amount) {
  const span = document.createElement("span");
  span.append(amountNode(amount), " KALE");
  return span;
}

function payoutList(payouts) {
  return Array.isArray(payouts) ? payouts : payouts.payouts || [];
}

function fillPayouts(id, payouts) {
  fill(id, payoutList(payouts), [
    (p) => kale(p.amount),
    (p) => (p.failure ? [`${p.status}: ${p.failure}`, p.failure] : p.status),
    (p) => when(p.created_at),
    (p) => (p.tx_hash ? el("code", `${p.tx_hash.slice(0, 12)}…`, { title: p.tx_hash }) : "–"),
  ], "No payout yet.");
}

async function loadWithdraw(id) {
  const base = `/api/farmers/${encodeURIComponent(id)}`;
  try {
    const [f, payouts] = await Promise.all([api("GET", base), api("GET", `${base}/payouts`)]);
    const balance = f.balance || {};
    const available = balance.available || f.available || balance.balance || balance;
    const line = $("withdraw-available");
    line.replaceChildren("Available: ", amountNode(available), " KALE, paid to ", el("code", f.payout_address, { class: "address" }));
    fillPayouts("payouts", payouts);
  } catch (err) {
    needSignIn(err, "withdraw-status");
  }
}

function onWithdraw(id) {
  return (event) => {
    event.preventDefault();
    const stroops = kaleToStroops($("withdraw-amount").value);
    if (stroops === null || stroops === "0") {
      setStatus("withdraw-status", "Write the amount in KALE, more than 0, with at most 7 decimals (e.g. 1.5).");
      $("withdraw-amount").focus();
      return;
    }
    const base = `/api/farmers/${encodeURIComponent(id)}`;
    setStatus("withdraw-status", "Asking the pool for the message to sign…", "info");
    api("POST", `${base}/payout/challenge`, { amount_stroops: stroops }).then(
      (made) => {
        setStatus("withdraw-status", "");
        askSignature($("withdraw-sign"), made, currentPayoutAddress, "withdraw-status", async (signature) => {
          const paid = await api("POST", `${base}/payout`, { challenge_id: made.challenge_id, signature });
          $("withdraw-sign").replaceChildren();
          $("withdraw-amount").value = "";
          setStatus("withdraw-status", `Payout ${paid.payout_id} requested (${paid.status}); it settles below.`, "good");
          loadWithdraw(id);
        });
      },
      (err) => needSignIn(err, "withdraw-status"),
    );
  };
}

function onLeave(id) {
  return (event) => {
    event.preventDefault();
    const base = `/api/farmers/${encodeURIComponent(id)}`;
    setStatus("leave-status", "Asking the pool for the message to sign…", "info");
    api("POST", `${base}/leave/challenge`, {}).then(
      (made) => {
        setStatus("leave-status", "");
        askSignature($("leave-sign"), made, currentPayoutAddress, "leave-status", async (signature) => {
          const left = await api("POST", `${base}/leave`, { challenge_id: made.challenge_id, signature });
          $("leave-sign").replaceChildren();
          const pending = left.pending_harvests ? ` ${left.pending_harvests} harvests are still due first.` : "";
          const now = left.status === "left" ? "has left" : "is leaving";
          setStatus("leave-status", `Your farmer ${now} the pool.${pending} Its KALE and XLM go to your payout address.`, "good");
        });
      },
      (err) => needSignIn(err, "leave-status"),
    );
  };
}

// The payout address of the farmer on screen (Freighter signs with it).
let currentPayoutAddress = "";

async function rememberPayoutAddress(id) {
  try {
    const f = await api("GET", `/api/farmers/${encodeURIComponent(id)}`);
    currentPayoutAddress = f.payout_address || "";
  } catch (err) {
    currentPayoutAddress = "";
  }
}

// ---- routing -------------------------------------------------------------------------

const handlers = { withdraw: null, leave: null };

function route() {
  clearInterval(timer);
  const hash = location.hash.replace(/^#/, "") || "pool";
  const farmer = /^farmer\/([A-Za-z0-9-]{1,64})(?:\/(funding|withdraw|leave))?$/.exec(hash);
  if (farmer) {
    const [, id, part] = farmer;
    rememberPayoutAddress(id);
    if (part === "funding") {
      showView("funding");
      poll(() => loadFunding(id), POLL_FUNDING_MS);
    } else if (part === "withdraw") {
      showView("withdraw");
      setStatus("withdraw-status", "");
      $("withdraw-sign").replaceChildren();
      const form = $("withdraw-form");
      if (handlers.withdraw) form.removeEventListener("submit", handlers.withdraw);
      handlers.withdraw = onWithdraw(id);
      form.addEventListener("submit", handlers.withdraw);
      document.querySelectorAll("#view-withdraw .back").forEach((a) => a.setAttribute("href", `#farmer/${id}`));
      poll(() => loadWithdraw(id), POLL_FUNDING_MS);
    } else if (part === "leave") {
      showView("leave");
      setStatus("leave-status", "");
      $("leave-sign").replaceChildren();
      const form = $("leave-form");
      if (handlers.leave) form.removeEventListener("submit", handlers.leave);
      handlers.leave = onLeave(id);
      form.addEventListener("submit", handlers.leave);
      document.querySelectorAll("#view-leave .back").forEach((a) => a.setAttribute("href", `#farmer/${id}`));
    } else {
      showView("dashboard");
      poll(() => loadDashboard(id), POLL_DASHBOARD_MS);
    }
    return;
  }
  if (hash === "join") {
    showView("join");
    showJoin();
  } else if (hash === "signin") {
    showView("signin");
  } else if (hash === "farm") {
    showView("farm");
    showFarm();
  } else {
    showView("pool");
    poll(loadPool, POLL_POOL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("join-form").addEventListener("submit", onJoin);
  $("signin-form").addEventListener("submit", onSignIn);
  $("signout").addEventListener("click", onSignOut);
  $("funding-copy").addEventListener("click", async (event) => {
    try {
      await navigator.clipboard.writeText($("funding-address").textContent);
      event.target.textContent = "Copied";
    } catch (err) {
      event.target.textContent = "Select the address to copy it";
    }
  });
  window.addEventListener("hashchange", () => {
    route();
    $("content").focus();
  });
  route();
});
