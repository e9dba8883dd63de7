// berth console: follows live log lines on the logs page. Every page works without this script;
// with it, new lines are appended as the instances write them.
"use strict";
(function () {
  const live = document.querySelector("p.live[data-source]");
  const body = document.getElementById("log-lines");
  if (!live || !body || !window.EventSource) return;
  live.hidden = false;
  const follow = document.getElementById("follow");
  let source = null;
  function cell(text, code) {
    const td = document.createElement("td");
    if (code) {
      const c = document.createElement("code");
      c.textContent = text;
      td.appendChild(c);
    } else {
      td.textContent = text;
    }
    return td;
  }
  function start() {
    source = new EventSource(live.dataset.source);
    source.addEventListener("line", function (e) {
      const space = e.data.indexOf(" ");
      const instance = e.data.slice(0, space);
      const rest = e.data.slice(space + 1).split(" ");
      const tr = document.createElement("tr");
      tr.appendChild(cell(rest[0] || "", false));
      tr.appendChild(cell(instance, false));
      tr.appendChild(cell(rest[1] || "", false));
      tr.appendChild(cell(rest.slice(2).join(" "), true));
      body.appendChild(tr);
      if (follow.checked) tr.scrollIntoView({ block: "nearest" });
    });
  }
  follow.addEventListener("change", function () {
    if (follow.checked && !source) start();
    if (!follow.checked && source) { source.close(); source = null; }
  });
  start();
})();
