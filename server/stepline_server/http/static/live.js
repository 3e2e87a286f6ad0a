// Stepline dashboard: live updates, with no framework and no build step.
//
// A page's <main data-poll="/api/..."> names the JSON endpoint behind it. Every second, while
// the tab is visible, this script fetches that endpoint; when the answer differs from the last
// one, it fetches the page again and swaps each [data-live-region] element (matched by id), so
// the HTML is rendered in one place only: the server's templates. A run page stops polling once
// its run has ended. Times are shown in the reader's time zone, and durations of work in
// progress ([data-since]) tick every second.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var MAX_BACKOFF_MS = 10000;
  var main = document.querySelector("main[data-poll]");
  var indicator = document.getElementById("live-status");
  var serverOffsetMs = 0; // server clock minus this browser's clock
  var lastAnswer = null;
  var failures = 0;
  var timer = null;

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatDuration(ms) {
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + " ms";
    if (ms < 10000) return (ms / 1000).toFixed(2) + " s";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    var s = Math.floor(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad(Math.floor(s % 3600 / 60)) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }

  function formatTime(ms) {
    var d = new Date(ms);
    var now = new Date();
    var time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === now.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function localizeTimes(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (el) {
      el.textContent = formatTime(Number(el.getAttribute("data-ms")));
    });
  }

  function tickDurations() {
    var now = Date.now() + serverOffsetMs;
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = formatDuration(now - Number(el.getAttribute("data-since")));
    });
  }

  function finished() {
    return document.querySelector('[data-live-region][data-ended="true"]') !== null;
  }

  function setIndicator(state) {
    if (!indicator) return;
    indicator.classList.toggle("on", state !== "idle");
    indicator.classList.toggle("off", state === "offline");
    indicator.textContent = state === "offline" ? "reconnecting" : "live";
  }

  function swapRegions(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live-region]").forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (!next) return;
      // Keep what the reader opened or closed.
      old.querySelectorAll("details[id]").forEach(function (d) {
        var twin = next.querySelector("#" + CSS.escape(d.id));
        if (twin) twin.open = d.open;
      });
      old.replaceWith(next);
    });
    localizeTimes(document);
    tickDurations();
    document.dispatchEvent(new CustomEvent("stepline:refreshed"));
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(poll, delay);
  }

  function poll() {
    if (document.hidden) return; // resumed by visibilitychange
    fetch(main.getAttribute("data-poll"), { headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (answer) {
        failures = 0;
        setIndicator("live");
        // The first answer is compared with the page as rendered, which may already be out of
        // date (a run that ended between the render and this poll): refresh once to be sure.
        var changed = answer !== lastAnswer;
        lastAnswer = answer;
        if (!changed) return null;
        return fetch(window.location.href, { headers: { Accept: "text/html" } })
          .then(function (response) { return response.text(); })
          .then(swapRegions);
      })
      .then(function () {
        if (finished()) { setIndicator("idle"); return; }
        schedule(POLL_MS);
      })
      .catch(function () {
        failures += 1;
        setIndicator("offline");
        schedule(Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures)));
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var serverNow = document.body.getAttribute("data-now");
    if (serverNow) serverOffsetMs = Number(serverNow) - Date.now();
    localizeTimes(document);
    setInterval(tickDurations, 1000);
    if (!main || finished()) return;
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) schedule(0);
    });
    schedule(0);
  });
})();
