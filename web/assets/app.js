// rewind restore portal: the browser front end. Plain JavaScript, no framework, no build step.
// Everything users or the repository provide (names, paths, reasons) goes into the page with
// textContent only (see `el`), never as HTML.
"use strict";

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Create an element: el("a", {href: "#"}, "text", child...). Strings become text nodes. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (id) => document.getElementById(id);

/** Replace an element's children, skipping empty ones (the DOM would print "null"). */
function fill(e, ...children) {
  e.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false && c !== ""));
}
const main = () => $("main");

function announce(text) {
  $("live").textContent = text;
}

function humanSize(n) {
  if (n === null || n === undefined) return "";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let v = n, u = 0;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  if (u === 0) return n === 1 ? "1 byte" : `${n} bytes`;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", year: "numeric" });
const timeFmt = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
const relFmt = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function humanDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : dateFmt.format(d);
}

function ago(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const s = (d - Date.now()) / 1000;
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [30, "day"], [12, "month"], [Infinity, "year"]];
  let v = s;
  for (const [n, unit] of steps) {
    if (Math.abs(v) < n) return relFmt.format(Math.round(v), unit);
    v /= n;
  }
  return "";
}

/** A <time> element showing local date and a relative hint. */
function when(iso) {
  if (!iso) return "";
  return el("time", { datetime: iso, title: new Date(iso).toString() }, humanDate(iso));
}

function baseName(path) {
  const p = path.replace(/\/+$/, "");
  return p.slice(p.lastIndexOf("/") + 1) || "/";
}

function dirName(path) {
  const i = path.replace(/\/+$/, "").lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

const IMAGE = /\.(png|jpe?g|gif|webp|bmp|ico)$/i;
const TEXT = /\.(txt|md|csv|tsv|log|ini|conf|cfg|json|xml|ya?ml|toml|html?|css|js|ts|py|rs|c|h|cpp|java|go|sh|sql|tex|srt|rtf)$/i;

function kindIcon(kind, name) {
  const k = kind === "dir" ? "folder" : kind === "symlink" ? "link" : IMAGE.test(name || "") ? "image" : "file";
  return el("img", { class: "icon", src: `/i/${k}.svg`, alt: "", width: 20, height: 20 });
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => u.append(k, x));
    else if (v !== undefined && v !== null && v !== "") u.append(k, v);
  }
  return u.toString();
}

// A path that text cannot carry (not UTF-8, control characters) comes with `path_b64`, its
// exact bytes: the download names it by that.
function downloadUrl(snapshot, path, pathB64) {
  return "/api/download?" + qs(pathB64 ? { snapshot, path_b64: pathB64 } : { snapshot, path });
}

function archiveUrl(snapshot, paths) {
  return "/api/archive?" + qs({ snapshot, path: paths });
}

// ---------------------------------------------------------------------------------------------
// The API

let me = null;

class ApiError extends Error {
  constructor(status, code, message, retryAfter, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf_token;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, "network", "The portal cannot be reached. Check your network connection and try again.");
  }
  let j = null;
  try { j = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    throw new ApiError(r.status, j && j.error, (j && j.message) || r.statusText, r.headers.get("Retry-After"), j);
  }
  return j;
}

/** What to tell a person about an error: what happened and what to do. */
function explain(e, what) {
  if (!(e instanceof ApiError)) return `Something went wrong (${e}). Reload the page and try again.`;
  switch (e.status) {
    case 0: return e.message;
    case 400: return `The request was not understood: ${e.message}. Go back and try again.`;
    case 401: return "Your session has ended. Please sign in again.";
    case 403: return `You are not allowed to do that: ${e.message}.`;
    case 404: return `${what || "This item"} was not found. It may never have existed, or it is not yours to see. Check the link, or look in Recently deleted or Search.`;
    case 429: return `Too many attempts. Wait ${minutes(e.retryAfter)} and try again.`;
    case 503:
      if (/catalog being built/i.test(e.message)) return "Search and the deleted-files list are being prepared. Try again in a few minutes; you can Browse your backups meanwhile.";
      if (/catalog/i.test(e.message)) return "Search and the deleted-files list are not ready yet: the backup administrator needs to build the catalog (rewind catalog rebuild). You can still Browse your backups.";
      return `The service is temporarily unavailable (${e.message}). Try again in a few minutes; if it persists, contact your helpdesk.`;
    default: return `The portal had a problem (${e.message || e.status}). Try again; if it persists, contact your helpdesk.`;
  }
}

function minutes(retryAfter) {
  const s = parseInt(retryAfter || "60", 10);
  return s <= 90 ? `${s} seconds` : `${Math.ceil(s / 60)} minutes`;
}

function errorBox(e, what) {
  if (e instanceof ApiError && e.status === 401 && me) {
    me = null;
    setTimeout(() => loginPage("Your session has ended (after a while without activity, or you signed out elsewhere). Sign in again to continue."), 0);
  }
  return el("div", { class: "error", role: "alert" }, explain(e, what));
}

function spinner(text) {
  return el("div", { class: "loading", role: "status" }, el("span", { class: "spinner", "aria-hidden": "true" }), text || "Loading…");
}

function empty(title, text, ...extra) {
  return el("div", { class: "empty" }, el("strong", {}, title), text, ...extra);
}

// ---------------------------------------------------------------------------------------------
// A sortable table that renders rows a page at a time.

/**
 * columns: [{key, label, value(row) -> sortable, cell(row) -> Node|string, cls, sortable}]
 * opts: {pageSize, more: async () => rows | null (fetch more from the server), emptyNode, caption}
 */
function table(columns, rows, opts) {
  const pageSize = opts.pageSize || 100;
  let shown = pageSize;
  let sortKey = opts.sortKey || null, sortDir = opts.sortDir || 1;
  let serverDone = !opts.more || !!opts.done;
  const wrap = el("div", {});
  const tbody = el("tbody", {});
  const headRow = el("tr", {});
  const moreBtn = el("button", { type: "button", class: "more", onclick: showMore }, "Show more");
  const count = el("p", { class: "sub", "aria-live": "polite" });

  function sorted() {
    if (!sortKey) return rows;
    const col = columns.find((c) => c.key === sortKey);
    return [...rows].sort((a, b) => {
      const x = col.value(a), y = col.value(b);
      if (x === y) return 0;
      if (x === undefined || x === null) return 1;
      if (y === undefined || y === null) return -1;
      return (typeof x === "string" ? x.localeCompare(y, undefined, { numeric: true, sensitivity: "base" }) : x < y ? -1 : 1) * sortDir;
    });
  }

  function renderHead() {
    fill(headRow, ...columns.map((c) => {
      const th = el("th", { scope: "col", class: c.cls });
      if (c.value && c.sortable !== false) {
        th.setAttribute("aria-sort", sortKey === c.key ? (sortDir > 0 ? "ascending" : "descending") : "none");
        th.append(el("button", { type: "button", onclick: () => sortBy(c.key), title: `Sort by ${c.label}` }, c.label));
      } else {
        th.append(c.labelNode ? c.labelNode() : c.label);
      }
      return th;
    }));
  }

  function renderBody() {
    const list = sorted().slice(0, shown);
    fill(tbody, ...list.map((r) => el("tr", {}, columns.map((c) => el("td", { class: c.cls }, c.cell(r))))));
    const more = rows.length > shown || !serverDone;
    moreBtn.hidden = !more;
    count.textContent = rows.length > 20 || !serverDone ? `Showing ${list.length} of ${rows.length}${serverDone ? "" : "+"}` : "";
  }

  function sortBy(key) {
    if (sortKey === key) sortDir = -sortDir;
    else { sortKey = key; sortDir = 1; }
    renderHead();
    renderBody();
    announce(`Sorted by ${columns.find((c) => c.key === key).label}`);
  }

  async function showMore() {
    if (rows.length <= shown && !serverDone) {
      moreBtn.disabled = true;
      fill(moreBtn, el("span", { class: "spinner", "aria-hidden": "true" }), "Loading…");
      try {
        const got = await opts.more();
        if (got === null) serverDone = true;
        else rows.push(...got.rows), (serverDone = got.done);
      } catch (e) {
        wrap.append(errorBox(e));
        serverDone = true;
      }
      moreBtn.disabled = false;
      moreBtn.textContent = "Show more";
    }
    shown += pageSize;
    renderBody();
  }

  if (!rows.length && serverDone) return opts.emptyNode;
  renderHead();
  renderBody();
  wrap.append(el("table", {}, opts.caption ? el("caption", { class: "sr-only" }, opts.caption) : null, el("thead", {}, headRow), tbody), count, moreBtn);
  wrap.refresh = renderBody;
  return wrap;
}

/** Follow a catalog API's `next` cursor: returns {first: rows, more()}. */
async function pager(path, params) {
  let next = null;
  async function page() {
    // A page may come back short while `next` is set: keep following until rows arrive.
    let rows = [];
    for (let i = 0; i < 10; i++) {
      const j = await api("GET", path + "?" + qs({ ...params, limit: 200, cursor: next }));
      rows = rows.concat(j.items);
      next = j.next;
      if (next === null || rows.length >= 100) break;
    }
    return { rows, done: next === null };
  }
  const first = await page();
  return { first, more: () => page() };
}

// ---------------------------------------------------------------------------------------------
// Layout: header, navigation, acting banner

const PAGES = [
  ["deleted", "Recently deleted"],
  ["search", "Search"],
  ["browse", "Browse"],
  ["access", "Access history"],
  ["helpdesk", "Act for a user"],
];

function layout(page) {
  const top = $("top");
  top.hidden = !me;
  const banner = $("acting");
  if (!me) { banner.hidden = true; return; }
  const name = me.display_name || me.login;
  $("who").textContent = `Signed in as ${name}`;
  const nav = $("nav");
  fill(nav, ...PAGES.filter(([p]) => {
    if (p === "helpdesk") return me.role === "helpdesk" || me.role === "admin";
    if (p === "access") return !me.acting_for;
    return true;
  }).map(([p, label]) => el("a", { href: `#/${p}`, "aria-current": p === page ? "page" : false }, label)));
  if (me.acting_for) {
    const a = me.acting_for;
    banner.hidden = false;
    fill(banner, 
      el("span", { id: "acting-text" }, `You are acting for ${a.display_name || a.login} (${a.login}${a.realm ? `, realm ${a.realm}` : ""}) — reason: ${a.reason}. Everything you see is their view, and they can see that you looked.`),
      el("button", { type: "button", onclick: stopActing }, "Stop acting"),
    );
  } else {
    banner.hidden = true;
    fill(banner, );
  }
}

async function stopActing() {
  try {
    me = await api("POST", "/api/act/stop");
    go("#/helpdesk");
  } catch (e) {
    main().prepend(errorBox(e));
  }
}

function page(title, lead, ...body) {
  document.title = `${title} · rewind`;
  const m = main();
  fill(m, el("h1", {}, title), lead ? el("p", { class: "lead" }, lead) : null, ...body);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Sign in

function loginPage(message, info) {
  layout(null);
  document.title = "Sign in · rewind";
  const err = el("div", { role: "alert", "aria-live": "assertive" });
  if (message) err.append(el("div", { class: info ? "info" : "error" }, message));
  const user = el("input", { id: "username", name: "username", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const pass = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const btn = el("button", { type: "submit", class: "primary", id: "signin" }, "Sign in");
  const form = el("form", { class: "card login", novalidate: true, onsubmit: submit },
    el("h1", {}, "Get your files back"),
    el("p", { class: "lead" }, "Sign in with your usual work account to find and restore files from the backups."),
    err,
    el("label", { for: "username" }, "User name"), user,
    el("label", { for: "password" }, "Password"), pass,
    btn);
  fill(main(), form);
  user.focus();

  async function submit(ev) {
    ev.preventDefault();
    fill(err, );
    if (!user.value.trim() || !pass.value) {
      err.append(el("div", { class: "error" }, "Enter your user name and your password."));
      (user.value.trim() ? pass : user).focus();
      return;
    }
    btn.disabled = true;
    fill(btn, el("span", { class: "spinner", "aria-hidden": "true" }), "Signing in…");
    try {
      me = await api("POST", "/api/login", { username: user.value.trim(), password: pass.value });
      // Back to where the session ended, or to the landing page.
      go(location.hash && !location.hash.startsWith("#/login") ? location.hash : "#/deleted");
    } catch (e) {
      let text;
      if (e.status === 401) text = "That user name and password do not match. Check the spelling and Caps Lock, then try again. Forgot your password? Your IT helpdesk can reset it.";
      else if (e.status === 429) text = `Too many failed attempts. For your security, wait ${minutes(e.retryAfter)} before trying again.`;
      else if (e.status === 503) text = "The sign-in service (company directory) cannot be reached right now. Try again in a few minutes; if it persists, contact your helpdesk.";
      else text = explain(e);
      err.append(el("div", { class: "error", id: "login-error" }, text));
      btn.disabled = false;
      btn.textContent = "Sign in";
      pass.value = "";
      pass.focus();
    }
  }
}

async function signOut() {
  try { await api("POST", "/api/logout"); } catch (e) { /* the session is gone either way */ }
  me = null;
  history.replaceState(null, "", "#/login");
  loginPage("You have signed out. Close the browser window if this is a shared computer.", true);
}

// ---------------------------------------------------------------------------------------------
// Version rows (search, deleted), shared columns

function versionActions(v) {
  return [
    el("a", { class: "button primary", href: downloadUrl(v.snapshot, v.path, v.path_b64), download: v.name, "aria-label": `Download ${v.name}` }, "Download"),
    el("a", { class: "button", href: "#/file?" + qs({ host: v.host, path: v.path, snapshot: v.snapshot }), "aria-label": `Versions of ${v.name}` }, "Versions"),
  ];
}

/** A folder for a list: its last three parts (the full path in the tooltip). */
function shortDir(path) {
  const dir = dirName(path);
  const parts = dir.split("/").filter(Boolean);
  return parts.length <= 3 ? dir : "…/" + parts.slice(-3).join("/");
}

function nameCell(v) {
  return [kindIcon(v.kind, v.name),
    el("a", { class: "name", href: "#/file?" + qs({ host: v.host, path: v.path, snapshot: v.snapshot }) }, v.name),
    el("div", { class: "sub", title: dirName(v.path) }, `in ${shortDir(v.path)}`, v.host ? ` on ${v.host}` : "")];
}

// ---------------------------------------------------------------------------------------------
// Recently deleted (landing)

async function deletedPage(params) {
  const filter = el("input", { id: "deleted-q", type: "search", placeholder: "Filter by name", value: params.q || "", "aria-label": "Filter deleted files by name" });
  const form = el("form", { class: "row", role: "search", onsubmit: (e) => { e.preventDefault(); location.hash = "#/deleted?" + qs({ q: filter.value }); } },
    filter, el("button", { type: "submit" }, "Filter"));
  const out = el("div", {}, spinner("Looking for deleted files…"));
  page("Recently deleted", "Files that were in an earlier backup but are gone now, most recently deleted first. Download one to get it back.", form, out);
  try {
    const p = await pager("/api/deleted", { q: params.q, kind: "file" });
    const cols = [
      { key: "name", label: "Name", value: (v) => v.name, cell: nameCell },
      { key: "gone", label: "Deleted", value: (v) => v.deleted && v.deleted.first_absent.time, cls: "when",
        cell: (v) => v.deleted ? [el("span", {}, "gone by "), when(v.deleted.first_absent.time),
          el("div", { class: "sub" }, "last backed up ", when(v.deleted.last_present.time))] : "" },
      { key: "size", label: "Size", value: (v) => v.size, cell: (v) => humanSize(v.size), cls: "num opt" },
      { key: "a", label: "Actions", cell: versionActions, cls: "actions" },
    ];
    fill(out, table(cols, p.first.rows, {
      more: p.more, done: p.first.done, caption: "Deleted files",
      emptyNode: params.q
        ? empty("No deleted file matches that name.", "Try a shorter part of the name, or use Search to look through every version.")
        : empty("Nothing you had has been deleted.", "When a file disappears from the latest backup it shows up here. To find an older version of a file that still exists, use Search or Browse."),
    }));
  } catch (e) {
    fill(out, errorBox(e, "The list"));
  }
}

// ---------------------------------------------------------------------------------------------
// Search

async function searchPage(params) {
  const f = (id, label, attrs) => [el("label", { for: id }, label), el("input", { id, name: id, value: params[id] || "", ...attrs })];
  const kind = el("select", { id: "kind", name: "kind" },
    ["", "file", "dir", "symlink"].map((k) => el("option", { value: k, selected: (params.kind || "") === k }, k ? { file: "Files", dir: "Folders", symlink: "Links" }[k] : "Anything")));
  const hosts = el("select", { id: "host", name: "host" }, el("option", { value: "" }, "All computers"));
  const form = el("form", { class: "card filters", role: "search", onsubmit: submit },
    el("div", { class: "wide" }, ...f("q", "Name (part of it, or a pattern like *.docx)", { type: "search", placeholder: "e.g. report" })),
    el("div", {}, el("label", { for: "host" }, "Computer"), hosts),
    el("div", {}, ...f("path", "In folder", { placeholder: "a folder path, e.g. /srv" })),
    el("div", {}, el("label", { for: "kind" }, "Type"), kind),
    el("div", {}, ...f("modified_after", "Changed after", { type: "date" })),
    el("div", {}, ...f("modified_before", "Changed before", { type: "date" })),
    el("div", {}, ...f("min_size", "At least (KB)", { type: "number", min: 0, inputmode: "numeric" })),
    el("div", {}, ...f("max_size", "At most (KB)", { type: "number", min: 0, inputmode: "numeric" })),
    el("div", {}, el("button", { type: "submit", class: "primary" }, "Search")));
  const out = el("div", {});
  page("Search", "Find any version of a file in every backup, by name. Every result says which versions exist.", form, out);
  api("GET", "/api/hosts").then((j) => {
    for (const h of j.items) hosts.append(el("option", { value: h.host, selected: params.host === h.host }, h.host));
  }).catch(() => {});

  function submit(e) {
    e.preventDefault();
    const fd = new FormData(form);
    const p = {};
    for (const [k, v] of fd.entries()) if (v) p[k] = v;
    location.hash = "#/search?" + qs(p);
  }
  const any = ["q", "path", "kind", "host", "modified_after", "modified_before", "min_size", "max_size"].some((k) => params[k]);
  if (!any) {
    out.append(empty("Type a name to search.", "Part of a name is enough: 'budget' finds 'Budget 2026 final.xlsx'. Use the filters to narrow it down."));
    $("q").focus();
    return;
  }
  out.append(spinner("Searching…"));
  const kb = (v) => (v ? String(Math.round(parseFloat(v) * 1000)) : undefined);
  try {
    const p = await pager("/api/search", { ...params, min_size: kb(params.min_size), max_size: kb(params.max_size) });
    const cols = [
      { key: "name", label: "Name", value: (v) => v.name, cell: nameCell },
      { key: "state", label: "Version", value: (v) => (v.present ? 1 : 0),
        cell: (v) => [v.present ? el("span", { class: "badge current" }, "current") : el("span", { class: "badge gone" }, v.deleted ? "deleted" : "older"),
          el("div", { class: "sub" }, "in backups from ", when(v.first_seen.time), " to ", when(v.last_seen.time))] },
      { key: "mtime", label: "Changed", value: (v) => v.mtime, cell: (v) => when(v.mtime), cls: "when opt" },
      { key: "size", label: "Size", value: (v) => v.size, cell: (v) => (v.kind === "file" ? humanSize(v.size) : ""), cls: "num opt" },
      { key: "a", label: "Actions", cell: (v) => (v.kind === "file" ? versionActions(v) : el("a", { class: "button", href: "#/browse?" + qs({ host: v.host, snapshot: v.snapshot, path: v.path }) }, "Open")), cls: "actions" },
    ];
    fill(out, table(cols, p.first.rows, {
      more: p.more, done: p.first.done, caption: "Search results",
      emptyNode: empty("Nothing found.", "Check the spelling, use a shorter part of the name, or remove some filters. Only files that are yours are searched."),
    }));
  } catch (e) {
    fill(out, errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Browse: computer -> date (timeline) -> folder

async function browsePage(params) {
  const out = el("div", {}, spinner());
  page("Browse", "Pick a computer and a backup date, then open folders as they were on that day.", out);
  try {
    const hosts = (await api("GET", "/api/hosts")).items;
    if (!hosts.length) {
      fill(out, empty("There are no backups with your files yet.", "Once a backup that contains your files has run, it appears here."));
      return;
    }
    const host = params.host || hosts[0].host;
    const snaps = (await api("GET", "/api/snapshots?" + qs({ host }))).items;
    const snap = snaps.find((s) => s.id === params.snapshot || s.short_id === params.snapshot) || snaps[0];
    const hostSel = el("select", { id: "browse-host", "aria-label": "Computer", onchange: () => { location.hash = "#/browse?" + qs({ host: hostSel.value }); } },
      hosts.map((h) => el("option", { value: h.host, selected: h.host === host }, `${h.host} (${h.snapshots} backups)`)));
    const top = el("div", { class: "row" }, el("label", { for: "browse-host" }, "Computer"), hostSel);
    fill(out, top, timeline(host, snaps, snap, params.path));
    if (!snap) return;
    const folder = el("div", {}, spinner("Opening the folder…"));
    out.append(folder);
    await showFolder(folder, host, snap, params.path || "/");
  } catch (e) {
    fill(out, errorBox(e, "This backup"));
  }
}

/** The host's backups grouped by local day, newest first: a horizontal timeline. */
function timeline(host, snaps, current, path) {
  const days = new Map();
  for (const s of snaps) {
    const key = dayFmt.format(new Date(s.time));
    if (!days.has(key)) days.set(key, []);
    days.get(key).push(s);
  }
  const nav = el("div", { class: "timeline", role: "group", "aria-label": "Backup dates" });
  const secFmt = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
  for (const [day, list] of days) {
    // Two backups in the same minute: show seconds to tell them apart.
    const labels = list.map((s) => timeFmt.format(new Date(s.time)));
    const fmt = new Set(labels).size < labels.length ? secFmt : timeFmt;
    nav.append(el("div", { class: "day" }, el("h3", {}, day), list.map((s) =>
      el("button", { type: "button", "aria-pressed": current && s.id === current.id ? "true" : "false", title: humanDate(s.time),
        "aria-label": `Backup of ${humanDate(s.time)}`,
        onclick: () => { location.hash = "#/browse?" + qs({ host, snapshot: s.short_id, path: path || "/" }); } },
      fmt.format(new Date(s.time))))));
  }
  return el("section", { "aria-label": "Backups" }, el("h2", { class: "sr-only" }, "Backups"), nav);
}

async function showFolder(out, host, snap, path) {
  let j;
  try {
    j = await api("GET", "/api/browse?" + qs({ snapshot: snap.id, path }));
  } catch (e) {
    fill(out, errorBox(e, "This folder"));
    return;
  }
  const folderLink = (p) => "#/browse?" + qs({ host, snapshot: snap.short_id, path: p });
  const parts = j.path.split("/").filter(Boolean);
  const crumbs = el("nav", { class: "crumbs", "aria-label": "Folder path" }, el("a", { href: folderLink("/") }, host));
  parts.forEach((p, i) => {
    crumbs.append(el("span", { class: "sep", "aria-hidden": "true" }, "›"));
    const full = "/" + parts.slice(0, i + 1).join("/");
    crumbs.append(i === parts.length - 1 ? el("span", { "aria-current": "page" }, p) : el("a", { href: folderLink(full) }, p));
  });
  const selected = new Set();
  const zipBtn = el("a", { class: "button primary", id: "zip-selected", href: "#", "aria-disabled": "true",
    onclick: (e) => { if (!selected.size) { e.preventDefault(); announce("Select files or folders first"); } } }, "Download selected (0)");
  function updateZip() {
    zipBtn.textContent = `Download selected (${selected.size})`;
    zipBtn.setAttribute("aria-disabled", selected.size ? "false" : "true");
    zipBtn.href = selected.size ? archiveUrl(snap.id, [...selected]) : "#";
  }
  const folderZip = j.dir.passthrough ? null
    : el("a", { class: "button", id: "zip-folder", href: archiveUrl(snap.id, [j.path]) }, "Download this folder (zip)");
  const selectable = (e) => !e.passthrough || e.kind === "dir";
  const all = el("input", { type: "checkbox", "aria-label": "Select all", onchange: () => {
    for (const e of j.entries) if (selectable(e)) (all.checked ? selected.add(e.path) : selected.delete(e.path));
    tbl.refresh && tbl.refresh();
    updateZip();
  } });
  const cols = [
    { key: "sel", label: "Select", labelNode: () => all, cell: (e) => selectable(e) ? el("input", { type: "checkbox", "aria-label": `Select ${e.name}`, checked: selected.has(e.path),
      onchange: (ev) => { ev.target.checked ? selected.add(e.path) : selected.delete(e.path); updateZip(); } }) : "" },
    { key: "name", label: "Name", value: (e) => (e.kind === "dir" ? "0" : "1") + e.name.toLowerCase(),
      cell: (e) => [kindIcon(e.kind, e.name),
        e.kind === "dir" ? el("a", { class: "name", href: folderLink(e.path) }, e.name)
          : e.kind === "file" ? el("a", { class: "name", href: "#/file?" + qs({ host, path: e.path, snapshot: snap.id }) }, e.name)
          : el("span", { class: "name" }, e.name),
        e.kind === "symlink" && e.target ? el("div", { class: "sub" }, `link to ${e.target}`) : null] },
    { key: "mtime", label: "Changed", value: (e) => e.mtime, cell: (e) => when(e.mtime), cls: "when opt" },
    { key: "size", label: "Size", value: (e) => (e.kind === "file" ? e.size : -1), cell: (e) => (e.kind === "file" ? humanSize(e.size) : ""), cls: "num" },
    { key: "a", label: "Actions", cell: (e) => e.kind === "file" && !e.passthrough
      ? el("a", { class: "button", href: downloadUrl(snap.id, e.path, e.path_b64), download: e.name, "aria-label": `Download ${e.name}` }, "Download") : "", cls: "actions" },
  ];
  const tbl = table(cols, j.entries, { pageSize: 200, sortKey: "name", caption: `Contents of ${j.path}`,
    emptyNode: empty("This folder is empty in this backup.", "Pick another date above, or go up a level.") });
  fill(out, 
    el("p", { class: "sub" }, "Backup of ", when(snap.time), ` (${ago(snap.time)})`),
    crumbs,
    el("div", { class: "row" }, el("span", { class: "spacer" }), folderZip, zipBtn),
    tbl);
}

// ---------------------------------------------------------------------------------------------
// File: versions, preview, download

async function filePage(params) {
  const name = baseName(params.path || "");
  const out = el("div", {}, spinner("Finding every version…"));
  page(name, null, el("p", { class: "sub" }, `${dirName(params.path || "/")}${params.host ? ` on ${params.host}` : ""}`), out);
  let versions = [];
  try {
    versions = (await api("GET", "/api/history?" + qs({ path: params.path, host: params.host }))).items;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 503 && params.snapshot)) {
      fill(out, errorBox(e, "This file"));
      return;
    }
  }
  const preview = el("section", { class: "preview card", "aria-label": "Preview" });
  const cols = [
    { key: "from", label: "In backups from", value: (v) => v.first_seen.time, cell: (v) => [when(v.first_seen.time), v.present ? el("span", { class: "badge current" }, "current") : null] },
    { key: "to", label: "until", value: (v) => v.last_seen.time, cell: (v) => [when(v.last_seen.time), v.deleted ? el("span", { class: "badge gone" }, "then deleted") : null] },
    { key: "mtime", label: "Changed", value: (v) => v.mtime, cell: (v) => when(v.mtime), cls: "when opt" },
    { key: "size", label: "Size", value: (v) => v.size, cell: (v) => humanSize(v.size), cls: "num" },
    { key: "a", label: "Actions", cls: "actions", cell: (v) => [
      el("button", { type: "button", onclick: () => showPreview(preview, v.snapshot, v.path, v.size, v.last_seen.time) }, "Preview"),
      el("a", { class: "button primary", href: downloadUrl(v.snapshot, v.path, v.path_b64), download: v.name, "aria-label": `Download the version of ${humanDate(v.last_seen.time)}` }, "Download")] },
  ];
  if (!versions.length && params.snapshot) {
    fill(out, el("div", { class: "row" }, el("a", { class: "button primary", href: downloadUrl(params.snapshot, params.path), download: name }, "Download")), preview);
    showPreview(preview, params.snapshot, params.path, null, null);
    return;
  }
  fill(out, el("h2", {}, `${versions.length} version${versions.length === 1 ? "" : "s"}`),
    table(cols, versions, { caption: "Versions", emptyNode: empty("No versions.", "") }), preview);
  const pick = versions.find((v) => v.snapshot === params.snapshot) || versions[0];
  if (pick) showPreview(preview, pick.snapshot, pick.path, pick.size, pick.last_seen.time);
}

const PREVIEW_BYTES = 256 * 1024;

/** Text is fetched and shown as text; images load in <img> (which never runs script). */
async function showPreview(box, snapshot, path, size, time) {
  const name = baseName(path);
  const head = el("h2", {}, "Preview", time ? el("span", { class: "sub" }, ` · version in the backup of ${humanDate(time)}`) : null);
  if (IMAGE.test(name)) {
    fill(box, head, el("img", { src: downloadUrl(snapshot, path), alt: `Preview of ${name}` }));
    return;
  }
  if (!TEXT.test(name)) {
    fill(box, head, el("p", { class: "sub" }, "No preview for this kind of file. Download it to open it."));
    return;
  }
  fill(box, head, spinner("Loading the preview…"));
  try {
    const r = await fetch(downloadUrl(snapshot, path), { headers: { Range: `bytes=0-${PREVIEW_BYTES - 1}` }, credentials: "same-origin" });
    if (!r.ok && r.status !== 206) throw new ApiError(r.status, "", r.statusText);
    const text = new TextDecoder("utf-8", { fatal: false }).decode(await r.arrayBuffer());
    const cut = size !== null && size > PREVIEW_BYTES;
    fill(box, head, el("pre", { tabindex: "0", "aria-label": `Contents of ${name}` }, text),
      cut ? el("p", { class: "sub" }, `Showing the first ${humanSize(PREVIEW_BYTES)} of ${humanSize(size)}. Download the file to see all of it.`) : null);
  } catch (e) {
    fill(box, head, errorBox(e, "The preview"));
  }
}

// ---------------------------------------------------------------------------------------------
// Helpdesk: act for a user

function helpdeskPage() {
  if (me.acting_for) {
    page("Act for a user", null, el("div", { class: "card" },
      el("p", {}, `You are acting for ${me.acting_for.display_name || me.acting_for.login}.`),
      el("button", { type: "button", class: "primary", onclick: stopActing }, "Stop acting")));
    return;
  }
  const err = el("div", { role: "alert" });
  const user = el("input", { id: "act-user", autocomplete: "off", autocapitalize: "none", spellcheck: "false", required: true });
  const reason = el("input", { id: "act-reason", required: true, minlength: 3, maxlength: 200, placeholder: "e.g. ticket 4711: restore lost report" });
  // Shown when the name is known in more than one sign-in realm (two different people).
  const realm = el("select", { id: "act-realm" });
  const realmBox = el("div", { hidden: true }, el("label", { for: "act-realm" }, "Realm (two users have this name)"), realm);
  const btn = el("button", { type: "submit", class: "primary", id: "act-start" }, "Act for this user");
  page("Act for a user", "See a user's files exactly as they see them, to help them get something back. The user can read who acted for them, when and why.",
    el("form", { class: "card", onsubmit: submit, novalidate: true }, err,
      el("label", { for: "act-user" }, "User name"), user,
      realmBox,
      el("label", { for: "act-reason" }, "Reason (a ticket number or a few words; the user sees it)"), reason,
      el("div", { class: "row" }, btn)));
  user.focus();
  user.addEventListener("input", () => { realmBox.hidden = true; fill(realm); });

  async function submit(ev) {
    ev.preventDefault();
    fill(err, );
    if (!user.value.trim()) return err.append(el("div", { class: "error" }, "Enter the user name of the person you are helping.")), user.focus();
    if (reason.value.trim().length < 3) return err.append(el("div", { class: "error" }, "Give a reason of at least 3 characters, such as the ticket number.")), reason.focus();
    btn.disabled = true;
    const body = { user: user.value.trim(), reason: reason.value.trim() };
    if (!realmBox.hidden && realm.value) body.realm = realm.value;
    try {
      me = await api("POST", "/api/act", body);
      go("#/deleted");
    } catch (e) {
      if (e.status === 409 && Array.isArray(e.body.realms)) {
        fill(realm, ...e.body.realms.map((r) => el("option", { value: r }, r)));
        realmBox.hidden = false;
        err.append(el("div", { class: "error" }, `There are users called "${body.user}" in several realms: ${e.body.realms.join(", ")}. Choose the realm of the person you are helping.`));
        realm.focus();
      } else {
        err.append(el("div", { class: "error" }, e.status === 404 ? `There is no user called "${body.user}". Check the spelling of the user name.` : explain(e)));
      }
      btn.disabled = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Access history

/** An audited query string, for people: `q=report&kind=file&limit=200` -> `name "report", files`. */
function readableQuery(q) {
  const p = new URLSearchParams(q);
  const out = [];
  const names = { q: "name", path: "folder", host: "computer", modified_after: "changed after", modified_before: "changed before",
    min_size: "at least (bytes)", max_size: "at most (bytes)", since: "since" };
  for (const [k, v] of p) {
    if (names[k]) out.push(`${names[k]} "${v}"`);
  }
  return out.length ? out.join(", ") : "everything";
}

async function accessPage() {
  const out = el("div", {}, spinner());
  page("Access history", "Who from the helpdesk or the backup team looked at your files for you, when, and why.", out);
  try {
    const items = (await api("GET", "/api/me/access")).items;
    const label = { act_start: "Started acting for you", act_stop: "Stopped", search: "Searched", deleted: "Listed deleted files", history: "Looked at versions", download: "Downloaded", archive: "Downloaded a zip", denied: "Asked for something that is not there" };
    // Attempts that were refused (a path that is not there, an act that was not allowed).
    const refused = (i) => i.outcome && i.outcome !== "ok" && i.outcome !== "incomplete";
    const cols = [
      { key: "time", label: "When", value: (i) => i.time, cell: (i) => when(i.time), cls: "when" },
      { key: "by", label: "Who", value: (i) => i.by, cell: (i) => i.by },
      { key: "event", label: "What", value: (i) => i.event, cell: (i) => [label[i.event] || i.event, refused(i) ? ` (refused: ${i.outcome})` : null,
        i.paths && i.paths.length ? el("div", { class: "sub" }, i.paths.join(", ")) : null, i.query ? el("div", { class: "sub" }, readableQuery(i.query)) : null] },
      { key: "reason", label: "Reason", value: (i) => i.reason, cell: (i) => i.reason || "" },
    ];
    fill(out, table(cols, items, { sortKey: "time", sortDir: -1, caption: "Access history",
      emptyNode: empty("Nobody has acted for you.", "If someone from the helpdesk opens your backups to help you, it is listed here with their reason.") }));
  } catch (e) {
    fill(out, errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Router

/** Show the page of `hash` (once: a changed hash routes through the hashchange event). */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [name, query] = h.split("?");
  return { name: name || "deleted", params: Object.fromEntries(new URLSearchParams(query || "")) };
}

async function route() {
  const { name, params } = parseHash();
  if (!me) {
    try { me = await api("GET", "/api/me"); } catch (e) {
      me = null;
      loginPage(e.status === 401 || name === "login" ? null : explain(e));
      return;
    }
  }
  if (name === "login") { location.hash = "#/deleted"; return; }
  const pages = { deleted: deletedPage, search: searchPage, browse: browsePage, file: filePage, helpdesk: helpdeskPage, access: accessPage };
  const fn = pages[name];
  layout(name);
  if (!fn) {
    page("Page not found", null, empty("There is no such page.", "Use the menu above to find your files."));
    return;
  }
  await fn(params);
  main().focus({ preventScroll: true });
}

document.addEventListener("DOMContentLoaded", () => {
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  route();
});
