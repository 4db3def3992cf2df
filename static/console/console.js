// Console pages: guidelines preview, confirmations, the import upload and its job's progress.
// No inline scripts, no CDN; server answers are put in the page as text, except the
// preview, which is the server's sanitized markdown (labeling.rendering, the annotators' renderer).
(function () {
  "use strict";
  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // the task page: code blocks of the conversation and replies highlighted as on the comparison page
  const highlighted = document.querySelector("[data-highlighter]");
  if (highlighted && window.highlightCodeBlocks) window.highlightCodeBlocks(highlighted.dataset.highlighter);

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

  // import: upload with a progress bar, then the job's page (a worker imports the file)
  const form = document.getElementById("import-form");
  if (form && window.XMLHttpRequest && window.FormData) {
    const bar = document.getElementById("import-progress");
    const status = document.getElementById("import-status");
    const errors = document.getElementById("import-form-errors");
    const button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      errors.textContent = "";
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRFToken", csrf());
      bar.hidden = false; bar.value = 0; bar.max = 100;
      status.textContent = "Uploading…";
      button.disabled = true;
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { bar.value = Math.round(100 * e.loaded / e.total); status.textContent = "Uploading: " + Math.round(100 * e.loaded / e.total) + "%"; }
      });
      xhr.addEventListener("load", function () {
        let data = null; try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === 202 && data && data.job) { window.location.assign(new URL(data.job, window.location.href).href); return; }
        button.disabled = false;
        bar.hidden = true; status.textContent = "";
        let problems = data && data.errors ? data.errors : null;
        if (!problems) {
          const reason = xhr.status === 413 ? "The file is larger than the server accepts." : "The upload failed (HTTP " + xhr.status + ").";
          problems = [{ field: "", message: reason + " Nothing was imported." }];
        }
        problems.forEach(function (p) { const li = document.createElement("li"); li.textContent = (p.field ? p.field + ": " : "") + p.message; errors.appendChild(li); });
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        status.textContent = "The connection failed. Nothing was imported.";
      });
      xhr.send(new FormData(form));
    });
  }

  // an import's page: poll its state until it ends, then load the report
  const job = document.getElementById("job");
  if (job && job.dataset.finished === "0" && window.fetch) {
    const bar = document.getElementById("job-progress");
    const detail = document.getElementById("job-detail");
    const statusText = document.getElementById("job-status");
    const size = function (n) {
      const units = ["bytes", "KB", "MB", "GB"]; let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return (i ? n.toFixed(1) : String(n)) + " " + units[i];
    };
    const eta = function (s) {
      if (s === null || s === undefined) return "";
      s = Math.round(s);
      return s < 60 ? ", about " + s + " s left" : ", about " + Math.floor(s / 60) + " min " + (s % 60) + " s left";
    };
    const poll = function () {
      fetch(job.dataset.stateUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error(r.statusText)); })
        .then(function (state) {
          if (state.finished) { window.location.reload(); return; }
          statusText.textContent = state.status_text + (state.cancelling ? " (cancelling)" : "");
          bar.value = state.fraction;
          detail.textContent = state.status === "queued" ? "Waiting for a worker."
            : size(state.bytes_done) + " of " + size(state.bytes_total) + " read (" + Math.round(100 * state.fraction) + "%)" + eta(state.eta_seconds);
          setTimeout(poll, 1000);
        })
        .catch(function () { detail.textContent = "Lost contact with the server; retrying…"; setTimeout(poll, 3000); });
    };
    setTimeout(poll, 500);
  }
})();
