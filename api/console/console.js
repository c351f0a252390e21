// The umarvel-search console: plain ES module, no build step, talks only to this API.
// The key lives in sessionStorage and travels only in the Authorization header; images
// are fetched with it and shown as blob: URLs, so no key ever appears in a URL.

const KEY = "umarvel.key";
const POLL_MS = 250;
const BATCH = 32; // images per ingestion request
const DOCUMENTS_PAGE = 50;  // documents a page of the document browser

const state = {
  key: sessionStorage.getItem(KEY),
  collections: [],
  queryMedia: null,  // the query's image or video file
  like: null,  // the document a "more like this" search is searching like
  documents: { collection: null, filter: null, cursor: null },  // the document browser's place
  offset: 0,  // the page of the results shown
  thumbnails: new Map(),
};

const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, contentType) {
  const init = { method, headers: { Authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = contentType || "application/json";
    init.body = contentType ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    if (response.status === 401) signOut(`Signed out: ${message}`);
    throw new ApiError(response.status, message);
  }
  return data;
}

function setStatus(text, kind = "info") {
  const line = $("#status");
  line.textContent = text;
  line.className = kind;
}

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function guarded(work) {
  try {
    await work();
  } catch (error) {
    setStatus(error.message, "error");
  }
}

// Sign-in and views

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  state.key = null;
  show("sign-in");
  setStatus(message, message ? "error" : "info");
}

async function signIn(key) {
  state.key = key;
  try {
    await api("GET", "/v1/collections");
  } catch (error) {
    state.key = null;
    setStatus(`Sign-in failed: ${error.message}`, "error");
    return;
  }
  sessionStorage.setItem(KEY, key);
  $("#api-key").value = "";
  setStatus("Signed in.");
  await loadModels();
  location.hash = location.hash && location.hash !== "#sign-in" ? location.hash : "#collections";
  await route();
}

function show(name) {
  for (const view of document.querySelectorAll("main > section")) {
    view.hidden = view.id !== `view-${name}`;
  }
  $("#nav").hidden = name === "sign-in";
}

async function route() {
  if (!state.key) return show("sign-in");
  const name = (location.hash || "#collections").slice(1);
  show(["collections", "search", "documents", "ingest"].includes(name) ? name : "collections");
  await guarded(loadCollections);
}

// Collections

async function loadCollections() {
  const answer = await api("GET", "/v1/collections");
  state.collections = answer.collections;
  const body = $("#collections-table tbody");
  body.replaceChildren(
    ...state.collections.map((c) =>
      element("tr", { "data-name": c.name }, [
        element("td", { text: c.name }),
        element("td", { text: String(c.documents.total) }),
        element("td", { text: String(c.documents.indexed) }),
        element("td", { text: String(c.documents.failed) }),
        element("td", { text: String(c.version) }),
        element("td", { text: String(c.generation) }),
        element("td", { text: c.recall_model }),
        element("td", {
          text: c.rerank.enabled ? `k ${c.rerank.k}, w ${c.rerank.weight}` : "off",
        }),
        element("td", {}, [
          action("search", "Search", () => goTo("search", c.name)),
          action("documents", "Documents", () => goTo("documents", c.name)),
          action("ingest", "Ingest", () => goTo("ingest", c.name)),
          action("reindex", "Reindex", () => guarded(() => reindex(c.name))),
          action("delete", "Delete", () => askDelete(c.name), "danger"),
        ]),
      ]),
    ),
  );
  for (const select of [$("#search-collection"), $("#documents-collection"), $("#ingest-collection")]) {
    const chosen = select.value;
    select.replaceChildren(
      ...state.collections.map((c) => element("option", { value: c.name, text: c.name })),
    );
    if (state.collections.some((c) => c.name === chosen)) select.value = chosen;
  }
}

function action(name, label, onclick, kind = "") {
  return element("button", { type: "button", "data-action": name, class: kind, text: label, onclick });
}

function goTo(view, collection) {
  location.hash = `#${view}`;
  $(`#${view}-collection`).value = collection;
}

async function loadModels() {
  const answer = await api("GET", "/v1/models");
  $("#create-model").replaceChildren(
    ...answer.recall_models.map((m) => element("option", { value: m, text: m })),
  );
}

function addField() {
  const row = element("div", { class: "field-row" });
  const index = document.querySelectorAll(".field-row").length;
  const name = element("input", { "aria-label": `Field ${index + 1} name`, class: "field-name", required: "" });
  const kind = element("select", { "aria-label": `Field ${index + 1} type`, class: "field-type" },
    ["str", "int", "float", "bool"].map((t) => element("option", { value: t, text: t })));
  row.append(name, kind, element("button", { type: "button", text: "Remove", onclick: () => row.remove() }));
  $("#fields").append(row);
  name.focus();
}

async function createCollection(event) {
  event.preventDefault();
  const fields = {};
  for (const row of document.querySelectorAll(".field-row")) {
    fields[row.querySelector(".field-name").value] = row.querySelector(".field-type").value;
  }
  const rerank = { enabled: $("#create-rerank").checked };
  if ($("#create-rerank-k").value) rerank.k = Number($("#create-rerank-k").value);
  if ($("#create-rerank-weight").value) rerank.weight = Number($("#create-rerank-weight").value);
  const body = {
    name: $("#create-name").value,
    description: $("#create-description").value,
    recall_model: $("#create-model").value || undefined,
    rerank,
    metadata_fields: fields,
  };
  await guarded(async () => {
    const created = await api("POST", "/v1/collections", body);
    setStatus(`Created collection ${created.name}.`);
    $("#create-form").reset();
    $("#fields").replaceChildren();
    await loadCollections();
  });
}

function askDelete(name) {
  const dialog = $("#delete-dialog");
  $("#delete-name").textContent = name;
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue !== "delete") return;
    guarded(async () => {
      await api("DELETE", `/v1/collections/${encodeURIComponent(name)}`);
      setStatus(`Deleted collection ${name}.`);
      await loadCollections();
    });
  };
  dialog.showModal();
}

async function reindex(name) {
  const job = await api("POST", `/v1/collections/${encodeURIComponent(name)}/reindex`, {});
  $("#reindex-panel").hidden = false;
  $("#reindex-name").textContent = name;
  await follow([job], $("#reindex-panel .progress-slot"));
  await loadCollections();
}

// Documents: a collection's documents, a page at a time, under a filter

function readFilter(input) {
  if (!input.value.trim()) return null;
  try {
    return JSON.parse(input.value);
  } catch {
    throw new Error("The filter is not JSON.");
  }
}

async function listDocuments(event) {
  event.preventDefault();
  state.documents = { collection: $("#documents-collection").value, filter: null, cursor: null };
  $("#documents-table tbody").replaceChildren();
  await guarded(async () => {
    state.documents.filter = readFilter($("#documents-filter"));
    await moreDocuments();
  });
}

async function moreDocuments() {
  const { collection, filter, cursor } = state.documents;
  const query = new URLSearchParams({ limit: String(DOCUMENTS_PAGE) });
  if (filter) query.set("filter", JSON.stringify(filter));
  if (cursor) query.set("cursor", cursor);
  const page = await api("GET", `/v1/collections/${encodeURIComponent(collection)}/documents?${query}`);
  const rows = page.documents.map((doc) =>
    element("tr", { "data-document": doc.id }, [
      element("td", { text: doc.id }),
      element("td", { text: doc.status }),
      element("td", { text: (doc.text || "").slice(0, 120) }),
      element("td", { text: JSON.stringify(doc.metadata) }),
      element("td", {}, [action("like", "More like this", () => {
        goTo("search", collection);
        searchLike(doc.id);
      })]),
    ]));
  $("#documents-table tbody").append(...rows);
  state.documents.cursor = page.next_cursor;
  $("#documents-more").hidden = !page.next_cursor;
  const shown = $("#documents-table tbody").children.length;
  $("#documents-state").textContent = `${shown} document${shown === 1 ? "" : "s"}` +
    (page.next_cursor ? ", more to load" : "");
}

// Progress of ingestion and reindex jobs

async function follow(jobs, slot) {
  const view = $("#progress-template").content.firstElementChild.cloneNode(true);
  slot.replaceChildren(view);
  let current = jobs;
  for (;;) {
    const total = current.reduce((n, j) => n + j.total, 0);
    const done = current.reduce((n, j) => n + j.done, 0);
    const failed = current.reduce((n, j) => n + j.failed, 0);
    const rate = current.reduce((n, j) => n + (j.rate || 0), 0);
    const eta = Math.max(0, ...current.map((j) => j.eta_seconds || 0));
    const finished = current.every((j) => j.state === "done" || j.state === "failed");
    const bar = view.querySelector("progress");
    bar.max = Math.max(total, 1);
    bar.value = done + failed;
    const phase = finished ? (current.some((j) => j.state === "failed") ? "failed" : "done") : "running";
    view.querySelector(".progress-text").textContent =
      `${phase}: ${done} done, ${failed} failed of ${total}` +
      (rate ? `, ${rate.toFixed(1)} documents/s` : "") +
      (!finished && eta ? `, about ${Math.ceil(eta)} s left` : "");
    view.dataset.state = phase;
    view.querySelector(".errors").replaceChildren(
      ...current.flatMap((j) => j.errors).map((e) =>
        element("li", { text: `${e.id ?? `item ${e.index}`}: ${e.message}` })),
    );
    if (finished) return current;
    await sleep(POLL_MS * 2);
    current = await Promise.all(current.map((j) => api("GET", j.url)));
  }
}

// Ingestion

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

const stem = (name) => name.replace(/\.[^.]*$/, "");

async function ingest(event) {
  event.preventDefault();
  const collection = $("#ingest-collection").value;
  const files = [...$("#ingest-files").files];
  if (!collection || !files.length) return setStatus("Choose a collection and files.", "error");
  const path = `/v1/collections/${encodeURIComponent(collection)}/documents`;
  await guarded(async () => {
    const captions = new Map();
    for (const file of files.filter((f) => f.name.endsWith(".txt"))) {
      captions.set(stem(file.name), (await file.text()).trim());
    }
    const jobs = [];
    for (const manifest of files.filter((f) => /\.(jsonl|ndjson)$/.test(f.name))) {
      jobs.push(await api("POST", path, await manifest.text(), "application/x-ndjson"));
    }
    const images = files.filter((f) => f.type.startsWith("image/"));
    for (let start = 0; start < images.length; start += BATCH) {
      const documents = [];
      for (const file of images.slice(start, start + BATCH)) {
        const doc = { id: file.name, image: await readBase64(file) };
        if (captions.has(stem(file.name))) doc.text = captions.get(stem(file.name));
        documents.push(doc);
      }
      jobs.push(await api("POST", path, { documents }));
    }
    // Videos go one a request: each may be as large as a whole batch of images.
    for (const file of files.filter((f) => f.type.startsWith("video/"))) {
      const doc = { id: file.name, media: [{ kind: "video", data: await readBase64(file) }] };
      if (captions.has(stem(file.name))) doc.text = captions.get(stem(file.name));
      jobs.push(await api("POST", path, { documents: [doc] }));
    }
    if (!jobs.length) {
      return setStatus("Nothing to upload: images, videos or a .jsonl manifest.", "error");
    }
    setStatus(`Uploading into ${collection}: ${jobs.length} job(s).`);
    const finished = await follow(jobs, $("#ingest-progress"));
    const failed = finished.reduce((n, j) => n + j.failed, 0);
    setStatus(`Ingestion into ${collection} finished, ${failed} failed.`, failed ? "error" : "info");
    await loadCollections();
  });
}

// Search

function setQueryMedia(file) {
  if (file && !/^(image|video)\//.test(file.type)) {
    return setStatus(`${file.name} is not an image or a video.`, "error");
  }
  state.queryMedia = file || null;
  const preview = $("#search-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  const isImage = Boolean(file) && file.type.startsWith("image/");
  preview.hidden = !isImage;
  $("#search-media-name").textContent = file && !isImage ? file.name : "";
  $("#clear-image").hidden = !file;
  if (isImage) preview.src = URL.createObjectURL(file);
  else preview.removeAttribute("src");
  if (!file) $("#search-image").value = "";
}

async function search(event) {
  event.preventDefault();
  state.offset = 0;  // a new search starts at its first page
  await runSearch();
}

async function page(step) {
  state.offset = Math.max(0, state.offset + step * (Number($("#search-top-k").value) || 10));
  await runSearch();
}

function searchLike(documentId) {
  state.like = documentId;
  $("#search-like").hidden = !documentId;
  $("#search-like-id").textContent = documentId || "";
  state.offset = 0;
  if (documentId) runSearch();
}

async function runSearch() {
  const collection = $("#search-collection").value;
  const body = { top_k: Number($("#search-top-k").value) || 10, wait: 0 };
  if (state.offset) body.offset = state.offset;
  if (state.like) body.like = [state.like];
  if ($("#search-mode").value) body.mode = $("#search-mode").value;
  if ($("#search-group-by").value.trim()) body.group_by = $("#search-group-by").value.trim();
  const text = $("#search-text").value.trim();
  if (text) body.text = text;
  if ($("#search-instruction").value.trim()) body.instruction = $("#search-instruction").value.trim();
  body.rerank = { enabled: $("#search-rerank").checked };
  if ($("#search-weight").value) body.rerank.weight = Number($("#search-weight").value);
  await guarded(async () => {
    const filter = readFilter($("#search-filter"));
    if (filter) body.filter = filter;
    if (state.queryMedia) {
      const kind = state.queryMedia.type.startsWith("video/") ? "video" : "image";
      body[kind] = await readBase64(state.queryMedia);
      if (kind === "video") body.rerank = { enabled: false };  // the reranker takes no video query
    }
    if ($("#search-candidates").value) body.candidates = $("#search-candidates").value;
    if (!body.text && !body.image && !body.video && !body.like) {
      throw new Error("Give a text, an image or a video.");
    }
    let answer = await api("POST", `/v1/collections/${encodeURIComponent(collection)}/queries`, body);
    renderAnswer(answer);
    while (answer.is_running) {
      await sleep(POLL_MS);
      answer = await api("GET", answer.url);
      renderAnswer(answer);
    }
    setStatus(answer.status === "done" ? "" : `The query ended ${answer.status}: ${answer.error}`,
      answer.status === "done" ? "info" : "error");
  });
}

function renderAnswer(answer) {
  const timings = Object.entries(answer.timings || {})
    .map(([stage, seconds]) => `${stage} ${(1000 * seconds).toFixed(0)} ms`).join(", ");
  const stateLine = $("#search-state");
  stateLine.textContent =
    `${answer.status}${answer.cached ? " (cached)" : ""}` +
    (answer.is_partial ? " — recall results, rerank running" : "") +
    (timings ? ` · ${timings}` : "");
  stateLine.dataset.status = answer.status;
  if (!answer.results) return;
  $("#results").replaceChildren(...answer.results.map(card));
  const { offset, limit, total } = answer.paging;
  $("#pages").hidden = total === 0;
  $("#previous-page").disabled = offset === 0;
  $("#next-page").disabled = offset + limit >= total;
  $("#page-range").textContent = `${offset + 1}–${Math.min(offset + limit, total)} of ${total}`;
}

const known = (value) => value !== undefined && value !== null;

function card(hit) {
  const scores = [known(hit.cosine) ? `cosine ${hit.cosine.toFixed(4)}` : "cosine —"];
  if (known(hit.keyword)) scores.push(`keyword ${hit.keyword.toFixed(4)}`);
  if (known(hit.p_yes)) scores.push(`P(Yes) ${hit.p_yes.toFixed(4)}`);
  if (hit.score !== undefined) scores.push(`score ${hit.score.toFixed(4)}`);
  const node = element("article", { class: "hit", "data-document": hit.document_id }, [
    element("h4", { text: `${hit.rank}. ${hit.document_id}` }),
  ]);
  if (known(hit.group)) node.append(element("p", { class: "group", text: `group ${hit.group}` }));
  if (hit.image_url) {
    const img = element("img", { alt: hit.document_id, class: "thumbnail" });
    node.append(img);
    thumbnail(hit.image_url).then((url) => { img.src = url; }, () => { img.alt = "image unavailable"; });
  }
  const video = (hit.media || []).find((part) => part.kind === "video");
  if (video) node.append(player(video.url, hit.segment));
  if (hit.text) node.append(element("p", { class: "text", text: hit.text }));
  node.append(element("p", { class: "scores", text: scores.join(" · ") }));
  node.append(action("like", "More like this", () => searchLike(hit.document_id)));
  return node;
}

// A video hit: the player shows the frame where its best segment starts (its poster) and
// plays from there; the button goes back to that start.
function player(url, segment) {
  const start = segment ? segment.start : 0;
  const video = element("video", { class: "thumbnail", controls: "", preload: "metadata", muted: "" });
  video.dataset.start = String(start);
  video.addEventListener("loadedmetadata", () => { video.currentTime = start; }, { once: true });
  thumbnail(url).then((blob) => { video.src = blob; }, () => { video.replaceWith("video unavailable"); });
  const span = segment ? `${segment.start.toFixed(1)}–${segment.end.toFixed(1)} s` : "from the start";
  const play = action("play-segment", `▶ ${span}`, () => {
    video.currentTime = start;
    video.play().catch(() => {});
  });
  return element("div", { class: "player" }, [video, play]);
}

async function thumbnail(url) {
  if (!state.thumbnails.has(url)) {
    state.thumbnails.set(url, (async () => {
      const response = await fetch(url, { headers: { Authorization: `Bearer ${state.key}` } });
      if (!response.ok) throw new ApiError(response.status, response.statusText);
      return URL.createObjectURL(await response.blob());
    })());
  }
  return state.thumbnails.get(url);
}

// Wiring

function wire() {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#api-key").value.trim());
  });
  $("#sign-out").addEventListener("click", () => signOut("Signed out."));
  $("#create-form").addEventListener("submit", createCollection);
  $("#add-field").addEventListener("click", addField);
  $("#ingest-form").addEventListener("submit", ingest);
  $("#search-form").addEventListener("submit", search);
  $("#documents-form").addEventListener("submit", listDocuments);
  $("#documents-more").addEventListener("click", () => guarded(moreDocuments));
  $("#next-page").addEventListener("click", () => page(1));
  $("#previous-page").addEventListener("click", () => page(-1));
  $("#clear-like").addEventListener("click", () => searchLike(null));
  $("#search-collection").addEventListener("change", () => searchLike(null));
  $("#search-image").addEventListener("change", (event) => setQueryMedia(event.target.files[0]));
  $("#clear-image").addEventListener("click", () => setQueryMedia(null));
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    setQueryMedia(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    if ($("#view-search").hidden) return;
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) setQueryMedia(file);
  });
  window.addEventListener("hashchange", route);
}

wire();
if (state.key) {
  guarded(loadModels).then(route);
} else {
  show("sign-in");
}
