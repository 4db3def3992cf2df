// The live chat-and-compare page: send a message, stream both replies (server-sent events
// over a POST, read with fetch), retry a failed turn. Replies are written as text nodes,
// never parsed as HTML; once both are whole the page reloads and the server renders them
// (sanitized markdown) with the judging form. No inline script (CSP).
(function () {
  "use strict";
  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  const dialog = document.getElementById("guidelines-dialog");
  const guidelines = document.getElementById("open-guidelines");
  if (guidelines && !document.getElementById("judgement-form")) {  // compare.js owns it on the judging form
    guidelines.addEventListener("click", function () { dialog.showModal(); });
  }

  // ---- the two replies, streamed
  const turnBox = document.getElementById("live-turn");
  const panes = document.getElementById("live-replies");
  const status = document.getElementById("live-status");
  const retry = document.getElementById("live-retry");
  const texts = [document.getElementById("live-text-0"), document.getElementById("live-text-1")];
  let streaming = false;

  function fail(text) {
    status.textContent = text;
    status.classList.add("error");
    retry.hidden = false;
    streaming = false;
  }
  function handle(name, data) {
    if (name === "delta") texts[data.side].appendChild(document.createTextNode(data.text));
    else if (name === "done") { status.textContent = "Both replies are in."; window.location.assign(data.url); return "done"; }
    else if (name === "error") { fail(data.message); return "error"; }
    return null;
  }
  function stream() {
    if (streaming) return;
    streaming = true;
    retry.hidden = true;
    status.classList.remove("error");
    status.textContent = "Both models are answering…";
    texts.forEach(function (pane) { pane.textContent = ""; });
    fetch(panes.dataset.streamUrl, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf(), "Accept": "text/event-stream" } })
      .then(function (response) {
        if (!response.ok || !response.body) {
          return response.json().then(function (body) { fail(body.detail || "the stream could not start"); }, function () { fail("the stream could not start (HTTP " + response.status + ")"); });
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let ended = null;
        function pump() {
          return reader.read().then(function (part) {
            if (part.done) {
              if (!ended) fail("The connection was cut before both replies arrived. Nothing was saved; retry.");
              return;
            }
            buffer += decoder.decode(part.value, { stream: true });
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              let name = "message", data = "";
              block.split("\n").forEach(function (line) {
                if (line.indexOf("event:") === 0) name = line.slice(6).trim();
                else if (line.indexOf("data:") === 0) data += line.slice(5).trim();
              });
              if (data) ended = handle(name, JSON.parse(data)) || ended;
            }
            return pump();
          });
        }
        return pump();
      })
      .catch(function () { fail("The connection was lost. Nothing was saved; retry."); });
  }
  if (panes) {
    retry.addEventListener("click", stream);
    if (panes.dataset.status === "pending") stream();
  }

  // ---- the message box: the message goes to the server, and its replies stream at once
  const composer = document.getElementById("live-composer");
  if (composer) {
    const errorBox = document.getElementById("live-error");
    const message = document.getElementById("live-message");
    let sending = false;
    function showError(text) { errorBox.textContent = text; errorBox.hidden = false; sending = false; }
    function showMessage(text) {
      const conversation = document.getElementById("live-conversation");
      const intro = document.getElementById("live-intro");
      if (intro) intro.remove();
      const turn = document.createElement("div");
      turn.className = "turn turn-user";
      const role = document.createElement("div");
      role.className = "role"; role.textContent = "user";
      const body = document.createElement("div");
      body.className = "markdown live-text"; body.textContent = text;
      turn.appendChild(role); turn.appendChild(body);
      conversation.appendChild(turn);
    }
    composer.addEventListener("submit", function (event) {
      event.preventDefault();
      if (sending) return;
      sending = true;
      const sent = message ? message.value : "";
      fetch(composer.action, { method: "POST", body: new FormData(composer), credentials: "same-origin", headers: { "X-CSRFToken": csrf() } })
        .then(function (response) {
          return response.json().then(function (body) {
            if (response.status !== 201) { showError((body.field ? body.field + ": " : "") + (body.detail || "could not send the message")); return; }
            if (message) showMessage(sent.trim());
            composer.hidden = true;
            turnBox.hidden = false;
            panes.dataset.streamUrl = body.stream_url;
            stream();
          });
        })
        .catch(function () { showError("The server did not answer; your message is still in the box. Try again."); });
    });
    if (message) {
      message.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); composer.requestSubmit(); }
      });
      message.focus();
    }
    const seed = document.getElementById("live-seed");
    if (seed) {
      seed.addEventListener("click", function () {
        fetch(composer.dataset.seedUrl, { credentials: "same-origin" })
          .then(function (response) { return response.json().then(function (body) { return [response.ok, body]; }); })
          .then(function (result) {
            if (result[0]) { message.value = result[1].text; message.focus(); }
            else showError(result[1].detail || "no seed prompt");
          })
          .catch(function () { showError("The server did not answer."); });
      });
    }
  }
})();
