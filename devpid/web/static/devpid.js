// devpid's pages work without this script; it adds copy buttons' clipboard
// writes and search-as-you-type suggestions (from /+search's JSON).
"use strict";
(function () {
  function copyButtons() {
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = button.getAttribute("data-copy");
        var done = function () {
          button.classList.add("copied");
          button.textContent = "Copied";
          setTimeout(function () { button.classList.remove("copied"); button.textContent = "Copy"; }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () {});
        } else {
          var area = document.createElement("textarea");
          area.value = text;
          area.setAttribute("readonly", "");
          area.className = "offscreen";
          document.body.appendChild(area);
          area.select();
          try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
          document.body.removeChild(area);
        }
      });
    });
  }

  function suggestions() {
    var input = document.getElementById("search-query");
    var list = document.getElementById("suggestions");
    if (!input || !list) { return; }
    var timer = null;
    var latest = 0;
    function clear() { list.hidden = true; list.textContent = ""; }
    function show(hits) {
      list.textContent = "";
      hits.slice(0, 8).forEach(function (hit) {
        var item = document.createElement("li");
        var link = document.createElement("a");
        link.href = "/" + hit.index + "/" + hit.project;
        link.textContent = hit.project;
        var where = document.createElement("span");
        where.className = "where";
        where.textContent = hit.index;
        link.appendChild(where);
        item.appendChild(link);
        list.appendChild(item);
      });
      list.hidden = hits.length === 0;
    }
    input.addEventListener("input", function () {
      var query = input.value.trim();
      if (timer) { clearTimeout(timer); }
      if (query.length < 2) { clear(); return; }
      timer = setTimeout(function () {
        var ticket = ++latest;
        fetch("/+search?query=" + encodeURIComponent(query), { headers: { "Accept": "application/json" } })
          .then(function (response) { return response.ok ? response.json() : null; })
          .then(function (document_) {
            if (ticket !== latest || !document_) { return; }
            show(document_.result.hits || []);
          })
          .catch(function () { clear(); });
      }, 120);
    });
    input.addEventListener("keydown", function (event) { if (event.key === "Escape") { clear(); } });
    document.addEventListener("click", function (event) { if (!list.contains(event.target) && event.target !== input) { clear(); } });
  }

  document.addEventListener("DOMContentLoaded", function () { copyButtons(); suggestions(); });
})();
