// Console pages: guidelines preview, confirmations, the import upload with its progress bar.
// No inline scripts, no CDN; server answers are put in the page as text, except the
// preview, which is the server's sanitized markdown (labeling.rendering, the annotators' renderer).
(function () {
  "use strict";
  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // confirm before destructive or visible actions
  document.querySelectorAll("[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });

  // guidelines: live preview through the server's sanitizing renderer
  const source = document.querySelector("textarea.markdown-source");
  const preview = document.getElementById("guidelines-preview");
  if (source && preview) {
    let timer = null, sent = 0;
    const render = function () {
      const body = new URLSearchParams({ text: source.value });
      const mine = ++sent;
      fetch(preview.dataset.url, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() }, body: body })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error(r.statusText)); })
        .then(function (html) { if (mine === sent) { preview.innerHTML = html; preview.dataset.rendered = "1"; } })
        .catch(function () { preview.textContent = "Preview unavailable."; });
    };
    source.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(render, 300); });
    const button = document.getElementById("preview-button");
    if (button) button.addEventListener("click", render);
    render();
  }

  // import: upload with a progress bar, then the server's progress while it reads the file
  const form = document.getElementById("import-form");
  if (form && window.XMLHttpRequest && window.FormData) {
    const bar = document.getElementById("import-progress");
    const status = document.getElementById("import-status");
    const errors = document.getElementById("import-form-errors");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      errors.textContent = "";
      const xhr = new XMLHttpRequest();
      let seen = 0;
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/x-ndjson");
      xhr.setRequestHeader("X-CSRFToken", csrf());
      bar.hidden = false; bar.value = 0; bar.max = 100;
      status.textContent = "Uploading…";
      form.querySelector("button[type=submit]").disabled = true;
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { bar.value = Math.round(50 * e.loaded / e.total); status.textContent = "Uploading: " + Math.round(100 * e.loaded / e.total) + "%"; }
      });
      const readLines = function () {
        const text = xhr.responseText;
        const end = text.lastIndexOf("\n");
        if (end < seen) return null;
        const lines = text.slice(seen, end).split("\n").filter(Boolean);
        seen = end + 1;
        let last = null;
        lines.forEach(function (line) {
          let message; try { message = JSON.parse(line); } catch (e) { return; }
          last = message;
          if (message.total) { bar.value = 50 + Math.round(50 * message.done / message.total); status.textContent = "Importing: " + Math.round(100 * message.done / message.total) + "% of the file read"; }
        });
        return last;
      };
      let final = null;
      xhr.addEventListener("progress", function () { final = readLines() || final; });
      xhr.addEventListener("load", function () {
        final = readLines() || final;
        if (xhr.status === 200 && final && final.report) {
          bar.value = 100;
          const target = new URL(final.report, window.location.href);
          if (target.pathname === window.location.pathname && target.search === window.location.search) {
            window.location.hash = target.hash;  // the same page: a hash change alone would not load the report
            window.location.reload();
          } else {
            window.location.assign(target.href);
          }
          return;
        }
        form.querySelector("button[type=submit]").disabled = false;
        bar.hidden = true; status.textContent = "";
        let data = null; try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        const problems = data && data.errors ? data.errors : [{ field: "", message: "The upload failed (HTTP " + xhr.status + "). Nothing was imported." }];
        problems.forEach(function (p) { const li = document.createElement("li"); li.textContent = (p.field ? p.field + ": " : "") + p.message; errors.appendChild(li); });
      });
      xhr.addEventListener("error", function () {
        form.querySelector("button[type=submit]").disabled = false;
        status.textContent = "The connection failed. Nothing was imported.";
      });
      xhr.send(new FormData(form));
    });
  }
})();
