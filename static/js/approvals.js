// The live approval queue: rows arrive and leave as the server says, over a WebSocket.
// Decisions stay ordinary form posts, so the page works without this script.
(function () {
  "use strict";
  const table = document.getElementById("approval-queue");
  if (!table) return;
  const rows = document.getElementById("approval-rows");
  const live = document.getElementById("approvals-live");
  const note = document.getElementById("approvals-note");
  const NOT_ALLOWED = 4403;
  let delay = 1000;
  let connectedOnce = false;

  function setLive(text, on) {
    live.textContent = text;
    live.classList.toggle("on", on);
  }

  function updateEmpty() {
    const empty = rows.querySelector(".approvals-empty");
    if (empty) empty.hidden = rows.querySelector(".approval-row") !== null;
  }

  async function fetchHtml(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    return response.status === 200 ? response.text() : "";
  }

  async function added(approval) {
    if (document.getElementById("approval-" + approval.id)) return;
    const html = await fetchHtml(table.dataset.rowUrl.replace("/0/", "/" + approval.id + "/"));
    if (!html || document.getElementById("approval-" + approval.id)) return;
    const holder = document.createElement("tbody");
    holder.innerHTML = html.trim();
    const row = holder.querySelector(".approval-row");
    if (!row) return;
    row.classList.add("arrived");
    rows.insertBefore(row, rows.querySelector(".approvals-empty"));
    updateEmpty();
    tick();
  }

  function removed(approval) {
    const row = document.getElementById("approval-" + approval.id);
    const by = approval.decider ? " by " + approval.decider : "";
    note.textContent = "Request " + approval.id + " (" + approval.tool + ") " + approval.status + by + ".";
    if (!row) return;
    row.classList.add("leaving");
    setTimeout(function () { row.remove(); updateEmpty(); }, 400);
  }

  async function refresh() {
    // After a reconnect: whatever happened while the socket was down.
    const html = await fetchHtml(table.dataset.rowsUrl);
    if (html) { rows.innerHTML = html; updateEmpty(); tick(); }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + table.dataset.wsPath);
    socket.onopen = function () {
      setLive("live", true);
      delay = 1000;
      if (connectedOnce) refresh();
      connectedOnce = true;
    };
    socket.onmessage = function (event) {
      const message = JSON.parse(event.data);
      if (message.type === "approval.created") added(message.approval);
      else if (message.type === "approval.decided" || message.type === "approval.expired") removed(message.approval);
    };
    socket.onclose = function (event) {
      if (event.code === NOT_ALLOWED) { setLive("not allowed", false); return; }
      setLive("reconnecting…", false);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function tick() {
    const nowMs = Date.now();
    rows.querySelectorAll("[data-since]").forEach(function (cell) {
      cell.textContent = span((nowMs - Date.parse(cell.dataset.since)) / 1000);
    });
    rows.querySelectorAll("[data-until]").forEach(function (cell) {
      const left = (Date.parse(cell.dataset.until) - nowMs) / 1000;
      cell.textContent = left > 0 ? span(left) : "expired";
    });
  }

  setInterval(tick, 1000);
  tick();
  connect();
})();
