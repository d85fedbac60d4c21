// mmrecall inspector: plain JS over the JSON API. Pages are chosen by the path under /ui.
"use strict";

const main = document.getElementById("main");
const KEY = "mmrecall-api-key";

function headers() {
  const key = localStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response.json();
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// Images go through fetch so that the API key travels in a header, never in a URL.
async function loadImage(img) {
  try {
    const response = await fetch(img.dataset.src, { headers: headers() });
    if (!response.ok) throw new Error(response.status);
    img.src = URL.createObjectURL(await response.blob());
  } catch (e) {
    const box = document.createElement("div");
    box.className = "noimg";
    box.textContent = img.alt || "no cover";
    img.replaceWith(box);
  }
}

function hydrateImages(root = main) {
  root.querySelectorAll("img[data-src]").forEach(loadImage);
}

function cover(id, cls = "thumb", alt = "") {
  return `<img class="${cls}" alt="${esc(alt)}" data-src="/v1/items/${encodeURIComponent(id)}/media/cover">`;
}

function chips(channels) {
  return `<div class="chips">${(channels || []).map(c => `<span class="ch-${esc(c)}">${esc(c)}</span>`).join("")}</div>`;
}

function card(result, extra = "") {
  const score = typeof result.score === "number" ? result.score.toFixed(3) : "";
  return `<div class="card" data-id="${esc(result.id)}" data-channels="${esc((result.channels || []).join(" "))}">
    <a href="/ui/item/${encodeURIComponent(result.id)}">${cover(result.id, "thumb", result.title || result.id)}</a>
    <div class="body"><div class="title">${esc(result.title || result.id)}</div>
    <div class="muted">${esc(result.id)} ${score ? "· " + score : ""}</div>${extra}</div></div>`;
}

function grid(results, extra = () => "", cls = "grid") {
  return results.length ? `<div class="${cls}">${results.map(r => card(r, extra(r))).join("")}</div>` : `<p class="muted">none</p>`;
}

async function itemPage(id) {
  const item = await api(`/v1/items/${encodeURIComponent(id)}`);
  const frames = Array.from({length: Math.min(item.frame_thumbnails || 0, 8)}, (_, n) => n).map(n =>
    `<img class="thumb" style="width:90px" alt="frame ${n}" data-src="/v1/items/${encodeURIComponent(id)}/media/frame?n=${n}">`).join(" ");
  main.innerHTML = `<div class="item-head"><div class="cover">${cover(id, "", "no cover")}</div><div>
    <h1 id="item-title">${esc(item.title || item.id)}</h1>
    <div class="muted">${esc(item.id)} · status <b>${esc(item.status)}</b>${item.error ? ` · <span class="bad">${esc(item.error)}</span>` : ""}
    · cluster ${item.cluster_id ?? "-"} ${item.cluster_id != null ? `(<a href="/ui/cluster/${item.cluster_id}">open</a>)` : ""}</div>
    <div class="muted">encoder versions: ${esc((item.versions || []).join(", ") || "none yet")}${item.frame_thumbnails ? ` · frames encoded: ${item.frames_used ?? 0} of ${item.frame_thumbnails} shown` : ""}</div>
    <div class="tags">${(item.tags || []).map(t => `<span>${esc(t)}</span>`).join("")}</div>
    <div>${frames}</div></div></div>
    <div class="row-label">v2v neighbours</div><div id="v2v"><p class="muted">loading...</p></div>
    <div class="row-label">cluster-mates</div><div id="cluster"><p class="muted">loading...</p></div>`;
  hydrateImages();
  for (const channel of ["v2v", "cluster"]) {
    const box = document.getElementById(channel);
    try {
      const found = await api(`/v1/similar/${encodeURIComponent(id)}?k=12&channel=${channel}`);
      box.innerHTML = grid(found.results);
    } catch (e) {
      box.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    }
    hydrateImages(box);
  }
}

async function userPage(id) {
  const [history, interests] = await Promise.all([
    api(`/v1/users/${encodeURIComponent(id)}/history?limit=60`),
    api(`/v1/users/${encodeURIComponent(id)}/interests`).catch(() => ({ interests: [] })),
  ]);
  main.innerHTML = `<h1>user ${esc(id)}</h1>
    <div class="row-label">history (oldest first, latest ${history.history.length})</div><div id="history">${grid(history.history, r =>
      `<div class="muted">${r.event ? esc(r.event) + " · " : ""}${new Date(r.timestamp * 1000).toISOString().slice(0, 10)}</div>`, "grid small")}</div>
    <h2>interests</h2>${interests.interests.map(i => `<div class="interest"><b>interest ${i.number}</b>
      <span class="muted">importance ${i.importance.toFixed(2)} · ${i.members.length} items · medoid ${esc(i.medoid)}</span>
      ${grid(i.members.slice(-10).map(m => ({ id: m })), () => "", "grid small")}</div>`).join("") || `<p class="muted">none</p>`}
    <h2>recall</h2><div class="filters" id="filters"></div><div id="recall"><p class="muted">loading...</p></div>`;
  hydrateImages();
  const box = document.getElementById("recall");
  try {
    const recall = await api("/v1/recall", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: id, k: 48 }) });
    const why = r => chips(r.channels) + `<div class="muted">${r.sources.map(s =>
      s.trigger ? `${esc(s.channel)} ← ${esc(s.trigger)}` : esc(s.channel)).join("<br>")}</div>`;
    box.innerHTML = grid(recall.results, why);
    const filters = document.getElementById("filters");
    filters.innerHTML = ["all", ...Object.keys(recall.channels)].map(c =>
      `<button data-channel="${c}" class="${c === "all" ? "on" : ""}">${c} ${c === "all" ? "" : "(" + recall.channels[c] + ")"}</button>`).join("");
    filters.addEventListener("click", event => {
      const channel = event.target.dataset.channel;
      if (!channel) return;
      filters.querySelectorAll("button").forEach(b => b.classList.toggle("on", b === event.target));
      box.querySelectorAll(".card").forEach(c => {
        c.style.display = channel === "all" || c.dataset.channels.split(" ").includes(channel) ? "" : "none";
      });
    });
  } catch (e) {
    box.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
  }
  hydrateImages(box);
}

async function clustersPage() {
  const found = await api("/v1/clusters?limit=60");
  main.innerHTML = `<h1>clusters <span class="muted">(${found.total}, largest 60)</span></h1>
    <table><tr><th>cluster</th><th>size</th><th>top tags</th><th>sample</th></tr>${found.clusters.map(c =>
      `<tr><td><a href="/ui/cluster/${c.cluster_id}">${c.cluster_id}</a></td><td>${c.size}</td>
       <td>${c.top_tags.map(esc).join(", ")}</td><td>${c.sample.map(s => `<a href="/ui/item/${encodeURIComponent(s)}">${esc(s)}</a>`).join(" ")}</td></tr>`).join("")}</table>`;
}

async function clusterPage(id) {
  const found = await api(`/v1/clusters/${id}?limit=120`);
  main.innerHTML = `<h1>cluster ${found.cluster_id} <span class="muted">${found.size} items</span></h1>
    <div class="tags">${found.top_tags.map(t => `<span>${esc(t.tag)} (${t.count})</span>`).join("")}</div>${grid(found.items)}`;
  hydrateImages();
}

async function jobsPage() {
  const [jobs, failed] = await Promise.all([api("/v1/jobs?limit=30"), api("/v1/items?status=failed&limit=50")]);
  main.innerHTML = `<h1>jobs</h1><table><tr><th>job</th><th>kind</th><th>state</th><th>progress</th><th>message / error</th></tr>
    ${jobs.jobs.map(j => `<tr><td>${esc(j.id.slice(0, 8))}</td><td>${esc(j.kind)}</td><td>${esc(j.state)}</td>
      <td><div class="bar"><div style="width:${Math.round(100 * j.progress)}%"></div></div>${j.done}/${j.total}</td>
      <td>${esc(j.message || "")}<span class="bad">${esc(j.error || "")}</span></td></tr>`).join("")}</table>
    <h2>items by status</h2><p>${Object.entries(failed.counts).map(([s, n]) => `${esc(s)}: <b>${n}</b>`).join(" · ")}</p>
    <h2>failed items</h2><table><tr><th>item</th><th>title</th><th>reason</th></tr>${failed.items.map(i =>
      `<tr><td><a href="/ui/item/${encodeURIComponent(i.id)}">${esc(i.id)}</a></td><td>${esc(i.title)}</td><td class="bad">${esc(i.error)}</td></tr>`).join("")}</table>`;
  if (jobs.jobs.some(j => j.state === "queued" || j.state === "running")) setTimeout(() => route(), 2000);
}

async function searchPage(q) {
  const found = await api(`/v1/search?q=${encodeURIComponent(q)}&k=24`);
  if (found.mode === "id") { location.assign(`/ui/item/${encodeURIComponent(found.results[0].id)}`); return; }
  main.innerHTML = `<h1>search: ${esc(q)} <span class="muted">(${esc(found.mode)}${found.encoder ? " · " + esc(found.encoder) : ""})</span></h1>${grid(found.results)}`;
  hydrateImages();
}

async function homePage() {
  const [items, jobs] = await Promise.all([api("/v1/items?limit=24&status=ready"), api("/v1/jobs?limit=5")]);
  main.innerHTML = `<h1>recently encoded</h1>${grid(items.items)}
    <h2>recent jobs</h2><p>${jobs.jobs.map(j => `${esc(j.kind)} <b>${esc(j.state)}</b>`).join(" · ") || "none"}</p>`;
  hydrateImages();
}

async function route() {
  const parts = location.pathname.replace(/^\/ui\/?/, "").split("/").map(decodeURIComponent);
  const q = new URLSearchParams(location.search).get("q");
  try {
    if (parts[0] === "item" && parts[1]) await itemPage(parts.slice(1).join("/"));
    else if (parts[0] === "user" && parts[1]) await userPage(parts.slice(1).join("/"));
    else if (parts[0] === "clusters") await clustersPage();
    else if (parts[0] === "cluster" && parts[1]) await clusterPage(parts[1]);
    else if (parts[0] === "jobs") await jobsPage();
    else if (parts[0] === "search" && q) await searchPage(q);
    else await homePage();
    document.body.dataset.ready = "1";
  } catch (e) {
    main.innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    document.body.dataset.ready = "error";
  }
}

document.getElementById("search").addEventListener("submit", event => {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (q) location.assign(`/ui/search?q=${encodeURIComponent(q)}`);
});
document.getElementById("user").addEventListener("submit", event => {
  event.preventDefault();
  const id = document.getElementById("uid").value.trim();
  if (id) location.assign(`/ui/user/${encodeURIComponent(id)}`);
});
document.getElementById("key").addEventListener("click", () => {
  const key = prompt("API key (read scope is enough; stored in this browser's localStorage)", localStorage.getItem(KEY) || "");
  if (key !== null) { key ? localStorage.setItem(KEY, key) : localStorage.removeItem(KEY); route(); }
});
route();
