// Dates in the viewer's time zone: every <time datetime="...Z"> is rewritten in local time (the
// UTC text stays as its title), and the filters' local "from/until" fields fill hidden UTC ones.
"use strict";
(function () {
  function pad(n) { return String(n).padStart(2, "0"); }
  function local(date) {
    var zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" })
      .formatToParts(date).filter(function (p) { return p.type === "timeZoneName"; });
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
      (zone.length ? " " + zone[0].value : "");
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date)) { return; }
      el.title = el.textContent;
      el.textContent = local(date);
    });
    var form = document.getElementById("filters");
    if (!form) { return; }
    form.querySelectorAll("input[data-utc]").forEach(function (input) {
      var hidden = form.querySelector("input[name='" + input.dataset.utc + "']");
      if (hidden.value) {
        var shown = new Date(hidden.value);
        if (!isNaN(shown)) {
          input.value = shown.getFullYear() + "-" + pad(shown.getMonth() + 1) + "-" + pad(shown.getDate()) +
            "T" + pad(shown.getHours()) + ":" + pad(shown.getMinutes());
        }
      }
    });
    form.addEventListener("submit", function () {
      form.querySelectorAll("input[data-utc]").forEach(function (input) {
        var hidden = form.querySelector("input[name='" + input.dataset.utc + "']");
        hidden.value = input.value ? new Date(input.value).toISOString() : "";
      });
    });
  });
})();
