/* The bcfl chain explorer: renders the node's public read routes; read-only.
 * Every string from the chain goes into the page as a text node or textContent (no HTML), and
 * the page's Content-Security-Policy admits no other script. It polls /v1/status every 2 s
 * (one request at a time, backing off on errors, paused while the tab is hidden) and reloads
 * the current view only when the height changes. */
"use strict";

const POLL_MS = 2000;
const MAX_BACKOFF_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";
let status = null;
let shownHeight = -1;
let shownRoute = "";
let backoff = POLL_MS;
let renders = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const link = (href, text, attrs) => el("a", Object.assign({ href }, attrs || {}), text);
// hashes by their head, did:key names by their tail (every did:key of Ed25519 starts z6Mk)
const short = (h) =>
  typeof h !== "string" ? String(h ?? "")
    : h.startsWith("did:key:") ? "did:key:…" + h.slice(-8)
      : h.length > 16 ? h.slice(0, 12) + "…" : h;
const hashCell = (h) => el("code", { title: h ?? "", class: "short" }, short(h));
const txLink = (h) => link("#/tx/" + encodeURIComponent(h), short(h), { class: "hash", title: h });
const blockLink = (n) => link("#/block/" + encodeURIComponent(n), String(n));
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "");

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error((body && body.message) || response.statusText);
  return body;
}

function table(caption, headers, rows, attrs) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)));
  const body = el("tbody", {});
  for (const row of rows) body.append(row);
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none yet")));
  return el("table", attrs || {}, el("caption", {}, caption), el("thead", {}, head), body);
}
const row = (...cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TH" ? c : el("td", {}, c))));
const pairs = (caption, items) =>
  el("table", { class: "pairs" }, el("caption", {}, caption),
    el("tbody", {}, ...items.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v)))));

function verdictCell(u) {
  if (u.verdict === "accept") return el("span", { class: "ok" }, "accepted");
  if (u.verdict === "reject") return el("span", { class: "bad" }, "rejected");
  return el("span", { class: "muted" }, "pending");
}

/* --- the accuracy curve: inline SVG drawn here, nothing fetched ------------------------------- */
function chart(rounds) {
  const points = rounds.filter((r) => r.mean_eval_accuracy !== null).map((r) => [r.number, Number(r.mean_eval_accuracy)]);
  const w = 560, h = 220, left = 44, right = 12, top = 12, bottom = 32;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const title = document.createElementNS(SVG, "title");
  title.textContent = points.length
    ? "Mean reported eval accuracy per round: " + points.map(([n, a]) => `round ${n} ${a.toFixed(3)}`).join(", ")
    : "No accuracy reported yet";
  svg.append(title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  const maxRound = Math.max(1, ...points.map((p) => p[0]));
  const x = (n) => left + ((w - left - right) * (n - (points.length > 1 ? 1 : 0))) / Math.max(1, maxRound - (points.length > 1 ? 1 : 0));
  const y = (a) => top + (h - top - bottom) * (1 - a);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    add("line", { x1: left, x2: w - right, y1: y(t), y2: y(t), stroke: "#d0d7de" });
    add("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end" }, t.toFixed(2));
  }
  add("text", { x: (w + left) / 2, y: h - 6, "text-anchor": "middle" }, "round");
  for (const [n] of points) add("text", { x: x(n), y: h - 18, "text-anchor": "middle" }, String(n));
  if (points.length) {
    add("polyline", { points: points.map(([n, a]) => `${x(n)},${y(a)}`).join(" "), fill: "none", stroke: "#0550ae", "stroke-width": 2 });
    for (const [n, a] of points) add("circle", { cx: x(n), cy: y(a), r: 3.5, fill: "#0550ae" });
  }
  return svg;
}

function roundsTable(rounds, caption) {
  return table(caption, ["Round", "State", "Opened", "Closed", "Accepted", "Rejected", "Mean eval accuracy", "Model"],
    rounds.map((r) => {
      const tr = row(link("#/round/" + r.number, "round " + r.number),
        el("span", { class: r.state === "closed" ? "ok" : "warn" }, r.state),
        blockLink(r.opened_at), r.closed_at === null ? "" : blockLink(r.closed_at),
        String(r.accepted), el("span", { class: r.rejected ? "bad" : "" }, String(r.rejected)),
        r.mean_eval_accuracy ?? "", r.model ? hashCell(r.model) : "");
      tr.dataset.round = r.number;
      tr.dataset.state = r.state;
      return tr;
    }), { id: "rounds" });
}

/* --- views --------------------------------------------------------------------------------- */
async function fetchRounds() {
  // the latest rounds that fit one answer (the node cuts an answer at 2,000 updates)
  const latest = status ? status.round.number : 0;
  const trainers = status ? Math.max(1, status.members.length) : 1;
  const count = Math.max(1, Math.min(100, Math.floor(2000 / trainers)));
  return getJSON("/v1/rounds?start=" + Math.max(1, latest - count + 1) + "&limit=" + count);
}

async function overview() {
  const s = status;
  const [rounds, blocks] = await Promise.all([fetchRounds(), getJSON("/v1/blocks?start=" + Math.max(0, s.height - 9) + "&limit=10")]);
  const out = [el("h2", {}, "Consortium")];
  if (s.alarm) {
    out.push(el("section", { class: "alarm", role: "alert", "aria-labelledby": "alarm-h" },
      el("h2", { id: "alarm-h" }, "Safety alarm"),
      el("p", {}, `At height ${s.alarm.height}: ${s.alarm.message}`),
      el("p", {}, "Blocks: ", ...s.alarm.blocks.map((b) => hashCell(b)))));
  }
  out.push(el("div", { class: "grid" },
    pairs("This chain", [
      ["Name", s.consortium], ["Genesis hash", el("code", {}, s.genesis)], ["Height", blockLink(s.height)],
      ["Head", hashCell(s.head)], ["Head time", time(s.head_time)],
      ["Round", `${s.round.number} of ${s.rounds_planned} (${s.round.state})`],
      ["Mempool", String(s.mempool)], ["This node", `${s.me.name ?? "?"} (${s.me.role})`],
      ["Alarms", s.alarm ? el("span", { class: "bad" }, "raised") : el("span", { class: "ok" }, "none")]]),
    el("figure", {}, el("figcaption", {}, "Mean reported eval accuracy per round"), chart(rounds.rounds))));
  out.push(table("Members", ["Name", "did", "Roles", "Power", "Status"],
    s.members.map((m) => row(m.name, hashCell(m.did), m.roles.join(", "), String(m.power),
      el("span", { class: m.status === "active" ? "ok" : "warn" }, m.status)))));
  out.push(table("Peers (as this node sees them)", ["URL", "Height", "Last seen", "Stream", "Error"],
    s.peers.map((p) => row(p.url, p.height ?? "", p.last_seen ? time(p.last_seen) : "never",
      p.stream_open ? "open" : "closed", p.error ? el("span", { class: "bad" }, p.error) : ""))));
  out.push(roundsTable(rounds.rounds.slice(-10).reverse(), "Latest rounds"));
  out.push(blocksTable(blocks.blocks.slice().reverse(), "Latest blocks"));
  return out;
}

function blocksTable(blocks, caption) {
  return table(caption, ["Height", "Time", "Proposer", "Transactions"],
    blocks.map((b) => row(blockLink(b.header.height), time(b.header.time), nameOf(b.header.proposer), String(b.txs.length))), { id: "blocks" });
}

function nameOf(did) {
  const m = status && status.members.find((x) => x.did === did);
  return m ? m.name : short(did);
}

async function roundsView() {
  const rounds = await fetchRounds();
  return [el("h2", {}, "Rounds"), chart(rounds.rounds), roundsTable(rounds.rounds.slice().reverse(), "Every round (newest first)")];
}

function deadlineText(r) {
  // a plan counts its deadline in blocks, in block time, or both (whichever comes first)
  const parts = [];
  if (r.deadline_height) parts.push("height " + r.deadline_height);
  if (r.deadline_time !== null && r.deadline_time !== undefined) {
    parts.push(new Date(r.deadline_time).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"));
  }
  return parts.length ? parts.join(" or ") : "-";
}

async function roundView(number) {
  const rounds = await getJSON("/v1/rounds?start=" + number + "&limit=1");
  const r = rounds.rounds[0];
  if (!r) return [el("p", {}, `Round ${number} has not opened yet.`)];
  const out = [el("h2", {}, `Round ${r.number}`),
    pairs("Summary", [["State", r.state], ["Opened in block", blockLink(r.opened_at)], ["Deadline", deadlineText(r)],
      ["Closed in block", r.closed_at === null ? "open" : blockLink(r.closed_at)], ["Aggregate", r.aggregate_tx ? txLink(r.aggregate_tx) : ""],
      ["Rule", r.rule ?? ""], ["Base model", hashCell(r.base_model)], ["Model", r.model ? hashCell(r.model) : ""],
      ["Mean eval accuracy", r.mean_eval_accuracy ?? ""]]),
    table("Updates", ["Member", "Update", "Block", "Samples", "Eval accuracy", "Verdict", "Reason", "In aggregate"],
      r.updates.map((u) => {
        const tr = row(u.name, txLink(u.tx), blockLink(u.height), String(u.num_samples), u.eval_accuracy ?? "",
          verdictCell(u), el("span", { class: u.verdict === "reject" ? "bad reason" : "reason", title: u.detail }, u.reason + (u.detail ? ": " + u.detail : "")),
          u.included ? "yes" : "no");
        tr.dataset.verdict = u.verdict ?? "pending";
        return tr;
      }), { id: "updates" })];
  if (r.state === "closed") {
    out.push(el("h3", {}, "Verify this model"),
      el("p", {}, link("/explorer/proof/" + r.number, `Download the proof of round ${r.number}`, { download: `round-${r.number}.proof.json.gz` }),
        " and ", link("/v1/blobs/" + r.model, "the model", { download: `round-${r.number}.safetensors` }), ", then check them offline:"),
      el("pre", {}, `bcfl model verify round-${r.number}.safetensors round-${r.number}.proof.json.gz --genesis ${status.genesis}`));
  }
  return out;
}

async function blocksView() {
  const start = Math.max(0, status.height - 49);
  const blocks = await getJSON("/v1/blocks?start=" + start + "&limit=50");
  return [el("h2", {}, "Blocks"), blocksTable(blocks.blocks.slice().reverse(), "The latest 50 blocks (newest first)")];
}

async function blockView(height) {
  const b = await getJSON("/v1/blocks/" + height);
  const hd = b.block.header;
  const nav = el("p", {}, hd.height > 0 ? link("#/block/" + (hd.height - 1), "← previous block") : "",
    " ", hd.height < status.height ? link("#/block/" + (hd.height + 1), "next block →") : "");
  return [el("h2", {}, `Block ${hd.height}`), nav,
    pairs("Header", [["Hash", el("code", {}, b.hash)], ["Previous", el("code", {}, hd.prev)], ["Time", time(hd.time)],
      ["Proposer", hd.proposer ? nameOf(hd.proposer) : "(genesis)"], ["Transaction root", hashCell(hd.tx_root)],
      ["Commit signatures", b.block.commit ? String(b.block.commit.sigs.length) : "none (genesis)"]]),
    table("Transactions", ["#", "Kind", "Author", "Hash"],
      b.tx_hashes.map((h, i) => {
        const tr = row(String(i), b.tx_kinds[i], nameOf(b.block.txs[i].tx.author), txLink(h));
        tr.dataset.kind = b.tx_kinds[i];
        return tr;
      }), { id: "txs" })];
}

async function txView(hash) {
  const t = await getJSON("/v1/txs/" + encodeURIComponent(hash));
  const out = [el("h2", {}, "Transaction"), pairs("Transaction", [["Hash", el("code", {}, hash)], ["Status", t.status],
    ["Block", t.height === null ? "" : blockLink(t.height)], ["Kind", t.tx ? t.tx.tx.kind : ""],
    ["Author", t.tx ? nameOf(t.tx.tx.author) : ""], ["Reason", t.reason]])];
  if (t.tx) out.push(el("h3", {}, "Body"), el("pre", { id: "tx-body" }, JSON.stringify(t.tx.tx.body, null, 2)));
  out[1].id = "tx";
  return out;
}

const ROUTES = [
  [/^#?\/?$/, overview], [/^#\/rounds$/, roundsView], [/^#\/round\/(\d{1,15})$/, roundView],
  [/^#\/blocks$/, blocksView], [/^#\/block\/(\d{1,15})$/, blockView], [/^#\/tx\/([0-9a-f]{64})$/, txView],
];

async function render(force) {
  const route = location.hash.startsWith("#/") ? location.hash : "#/";
  if (!status || (!force && route === shownRoute && status.height === shownHeight)) return;
  const found = ROUTES.find(([re]) => re.test(route));
  const main = document.getElementById("main");
  const seq = ++renders; // a later render (a click during a poll) wins over an earlier one
  let nodes;
  try {
    nodes = found ? await found[1](...route.match(found[0]).slice(1)) : [el("p", {}, "No such view. "), link("#/", "Back to the overview")];
  } catch (err) {
    nodes = [el("p", { class: "bad", role: "alert" }, "Could not load this view: " + err.message)];
  }
  if (seq !== renders) return;
  const moved = route !== shownRoute;
  shownRoute = route;
  shownHeight = status.height;
  main.replaceChildren(...nodes);
  if (moved && force) main.focus({ preventScroll: false });
}

async function poll() {
  const live = document.getElementById("live");
  if (!document.hidden) {
    try {
      status = await getJSON("/v1/status");
      document.getElementById("consortium").textContent = "· " + status.consortium;
      // a live region: it changes once a round, not once a block, so a screen reader is told
      // when a round opens or closes and is not read every height
      const text = `live · round ${status.round.number} ${status.round.state}`;
      if (live.textContent !== text) live.textContent = text;
      backoff = POLL_MS;
      await render(false);
    } catch (err) {
      live.textContent = "node unreachable, retrying";
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
    }
  }
  setTimeout(poll, backoff);
}

window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#/") || !location.hash) render(true);
});
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault(); // the views live in the hash: jump to the content by focus instead
  document.getElementById("main").focus();
});
poll();
