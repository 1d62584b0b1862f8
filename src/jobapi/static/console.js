// jobapi console: live parts of a page refresh themselves, and a key can be copied.
// Without this script every page still works; its "Refresh" link reloads it.
(function () {
  "use strict";

  // An element with data-live-url is replaced every 2 s by the server's fresh rendering
  // of it (the same template), until it carries data-live-stop (a finished job).
  var PERIOD_MS = 2000;

  function note(text) {
    var notes = document.querySelectorAll(".live-note");
    for (var i = 0; i < notes.length; i++) notes[i].textContent = text;
  }

  function refresh(id) {
    var region = document.getElementById(id);
    if (!region || region.hasAttribute("data-live-stop")) return;
    if (document.hidden) {  // nobody is looking: ask again when the page is shown
      document.addEventListener("visibilitychange", function shown() {
        document.removeEventListener("visibilitychange", shown);
        refresh(id);
      });
      return;
    }
    fetch(region.getAttribute("data-live-url"), {
      credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" }
    }).then(function (response) {
      if (response.status === 401) {  // signed out (a revoked token): the page says why
        window.location.reload();
        return null;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      if (html === null) return;
      var holder = document.createElement("template");
      holder.innerHTML = html.trim();
      var fresh = holder.content.getElementById(id);
      if (!fresh) throw new Error("no #" + id + " in the answer");
      region.replaceWith(fresh);
      note("Live: updates every " + PERIOD_MS / 1000 + " s.");
      schedule(id);
    }).catch(function (error) {
      note("Could not update (" + error.message + "); trying again.");
      schedule(id);
    });
  }

  function schedule(id) {
    window.setTimeout(function () { refresh(id); }, PERIOD_MS);
  }

  function copy(button) {
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.value).then(done, function () { source.select(); });
    } else {
      source.select();
      if (document.execCommand("copy")) done();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var regions = document.querySelectorAll(".live[data-live-url]");
    for (var i = 0; i < regions.length; i++) {
      if (!regions[i].hasAttribute("data-live-stop")) {
        note("Live: updates every " + PERIOD_MS / 1000 + " s.");
        schedule(regions[i].id);
      }
    }
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var j = 0; j < buttons.length; j++) {
      buttons[j].hidden = false;
      buttons[j].addEventListener("click", function (event) { copy(event.currentTarget); });
    }
  });
})();
