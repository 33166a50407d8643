// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  // The hover text says which zone it is in: the viewer's, not the server's.
  const absolute = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", timeZoneName: "short",
  });

  function relative(date) {
    const seconds = (date.getTime() - Date.now()) / 1000;
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size || unit === "second") {
        return rtf.format(Math.round(seconds / size), unit);
      }
    }
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
  }

  // Times are rendered in UTC by the server; show them relative, in the user's zone.
  function refreshTimes(root) {
    root.querySelectorAll("time[data-relative]").forEach((el) => {
      const date = new Date(el.getAttribute("datetime"));
      if (isNaN(date)) return;
      el.textContent = relative(date);
      el.title = absolute.format(date);
    });
    root.querySelectorAll("[data-duration-from]").forEach((el) => {
      const from = new Date(el.dataset.durationFrom);
      const to = el.dataset.durationTo ? new Date(el.dataset.durationTo) : new Date();
      el.textContent = duration(to - from);
    });
  }

  document.addEventListener("DOMContentLoaded", () => refreshTimes(document));
  document.addEventListener("htmx:load", (event) => refreshTimes(event.target));
  setInterval(() => refreshTimes(document), 1000);

  // Live polls (hx-trigger="every Ns") pause while the tab is hidden. This is done here,
  // not with an hx-trigger filter, because htmx evaluates filters and the CSP forbids eval.
  document.addEventListener("htmx:beforeRequest", (event) => {
    const trigger = event.detail.elt.getAttribute("hx-trigger") || "";
    if (document.visibilityState !== "visible" && /^\s*every\s/.test(trigger)) {
      event.preventDefault();
    }
  });

  // Copy-link buttons.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    navigator.clipboard.writeText(button.dataset.copy).then(() => {
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = label), 1500);
    });
  });

  // Keyboard: "/" focuses search, Escape leaves it, j/k move between runs, Enter opens
  // (native on links), "?" shows the keys.
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const field = event.target.closest("input, textarea, select");
    if (field) {
      if (event.key === "Escape" && field.matches("input[name=q]")) field.blur();
      return;
    }
    if (event.key === "?") {
      const keys = document.getElementById("keys");
      if (keys && !keys.open) { event.preventDefault(); keys.showModal(); }
      return;
    }
    if (event.key === "/") {
      const search = document.querySelector("input[name=q]");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (event.key !== "j" && event.key !== "k") return;
    const links = [...document.querySelectorAll("table.runs tbody td:nth-child(2) a")];
    if (!links.length) return;
    const index = links.indexOf(document.activeElement);
    const next = event.key === "j" ? Math.min(links.length - 1, index + 1) : Math.max(0, index - 1);
    links[next].focus();
  });

  // Keyboard focus survives a live refresh: remember the focused row before a swap,
  // focus the same row's link after it (the row is a new element then).
  let focusedRow = null;
  function rememberFocus() {
    const row = document.activeElement && document.activeElement.closest("tr[id]");
    if (row) focusedRow = row.id;
  }
  function restoreFocus() {
    if (!focusedRow) return;
    if (document.activeElement && document.activeElement !== document.body) {
      if (document.activeElement.closest("tr[id]")?.id !== focusedRow) return;
    }
    const link = document.querySelector(`#${CSS.escape(focusedRow)} td:nth-child(2) a`);
    if (link && link !== document.activeElement) link.focus();
  }
  document.addEventListener("htmx:beforeSwap", rememberFocus);
  document.addEventListener("htmx:oobBeforeSwap", rememberFocus);
  document.addEventListener("htmx:afterSettle", restoreFocus);
  document.addEventListener("htmx:oobAfterSwap", restoreFocus);
  document.addEventListener("focusin", (event) => {
    const row = event.target.closest("tr[id]");
    focusedRow = row ? row.id : null;
  });

  // The tab title: the attention count first, then the page's own title (which a
  // live run page updates from its status), and a favicon with a dot when count > 0.
  function updateTitle() {
    const strip = document.getElementById("attention");
    const total = strip ? Number(strip.dataset.total || 0) : 0;
    const live = document.querySelector("[data-title]");
    const base = live ? live.dataset.title : document.title.replace(/^\(\d+\+?\) /, "");
    // The label: the count, or "99+" past the cap the server counts to.
    document.title = (total ? `(${strip.dataset.label || total}) ` : "") + base;
    const icon = document.getElementById("favicon");
    if (icon) {
      if (!icon.dataset.plain) icon.dataset.plain = icon.getAttribute("href");
      icon.setAttribute("href", total ? icon.dataset.alert : icon.dataset.plain);
    }
  }
  document.addEventListener("DOMContentLoaded", updateTitle);
  document.addEventListener("htmx:afterSettle", updateTitle);

  // The live indicator: "offline" while the server does not answer a poll.
  function setLive(online) {
    document.body.classList.toggle("offline", !online);
    document.querySelectorAll("#live-state, .live-label").forEach((el) => {
      el.textContent = online ? (el.dataset.online || "live") : "offline";
      el.dataset.state = online ? "live" : "offline";
    });
  }
  document.addEventListener("htmx:sendError", () => setLive(false));
  document.addEventListener("htmx:timeout", () => setLive(false));
  document.addEventListener("htmx:responseError", (event) => {
    if (event.detail.xhr.status >= 500) setLive(false);
  });
  document.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful) setLive(true);
  });

  // Force cancel: the confirmation says it forces (the checkbox may be ticked after
  // the page rendered, so the question is chosen when the form is sent).
  document.addEventListener("htmx:confirm", (event) => {
    const form = event.target.closest && event.target.closest("form[data-confirm-force]");
    if (!form || !form.querySelector("input[name=force_cancel]:checked")) return;
    event.preventDefault();
    if (window.confirm(form.dataset.confirmForce)) event.detail.issueRequest(true);
  });

  // Plain forms (no htmx) ask before they are sent when they carry data-confirm.
  document.addEventListener("submit", (event) => {
    const button = event.submitter;
    const question = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
