// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

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

  // Keyboard: "/" focuses search, j/k move between runs, Enter opens (native on links).
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey) return;
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
})();
