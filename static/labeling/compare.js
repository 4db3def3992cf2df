// Keyboard shortcuts, time on task, the chosen reply's highlight, code wrapping and syntax
// highlighting for the comparison page. No inline script (CSP).
(function () {
  "use strict";
  const form = document.getElementById("judgement-form");
  if (!form) return;
  const started = performance.now();
  const timeOffset = Number(form.dataset.timeOffset) || 0;  // time spent before a validation error
  const ranking = form.dataset.ranking === "1";
  const readonly = form.dataset.readonly === "1";
  const letters = "ABCDEFGH".slice(0, Number(form.dataset.replies));
  const dialog = document.getElementById("guidelines-dialog");
  const hint = document.getElementById("key-hint");
  const root = document.documentElement;
  const FLAG_KEYS = { u: "unsafe", w: "factually_wrong", o: "other" };
  let selectedReply = null;
  let pendingFlag = null;
  let submitting = false;

  function check(id) {
    const input = document.getElementById(id);
    if (input && !input.disabled) {
      input.checked = !input.checked || input.type === "radio";
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }
  function syncStrength() {
    const choice = form.querySelector("input[name=choice]:checked");
    const level = choice && (choice.value === "tie" || choice.value === "both_bad");
    document.querySelectorAll("input[name=strength]").forEach(function (input) {
      input.disabled = level || readonly;
      if (level) input.checked = false;
    });
  }
  // The chosen reply's card is outlined: the winner of a pairwise task, the rank-1
  // replies of a ranking.
  function syncChosen() {
    const choice = form.querySelector("input[name=choice]:checked");
    const value = choice ? choice.value : "";
    const cards = Array.prototype.slice.call(document.querySelectorAll(".reply"));
    const first = cards.filter(function (card) {
      const rank = document.getElementById("rank-" + card.dataset.letter);
      return rank && rank.value === "1";
    });
    cards.forEach(function (card) {
      let chosen = false;
      if (!ranking) chosen = value === card.dataset.letter;
      else if (value === "ranking" && first.length < cards.length) chosen = first.indexOf(card) >= 0;  // all first: none better
      card.classList.toggle("chosen", chosen);
    });
  }
  function selectReply(letter) {
    selectedReply = letter;
    document.querySelectorAll(".reply").forEach(function (el) {
      el.classList.toggle("selected", el.dataset.letter === letter);
    });
  }
  function say(text) { if (hint) hint.textContent = text; }
  function submit(action) {
    if (submitting || readonly) return;
    const skip = document.getElementById("skip-button");
    if (action === "skip" && !skip) return;
    submitting = true;
    document.getElementById("time-spent").value = Math.round(timeOffset + performance.now() - started);
    if (action === "skip") skip.click();
    else form.requestSubmit(document.getElementById("submit-button"));
  }

  // Wrap long lines in code (on unless the annotator turned it off; remembered per browser).
  const wrapButton = document.getElementById("wrap-toggle");
  function setWrap(on) {
    root.classList.toggle("nowrap-code", !on);
    if (wrapButton) {
      wrapButton.setAttribute("aria-pressed", on ? "true" : "false");
      wrapButton.querySelector(".wrap-state").textContent = on ? "on" : "off";
    }
    try { window.localStorage.setItem("labeling.wrap", on ? "1" : "0"); } catch (e) { /* storage off */ }
  }
  function toggleWrap() { setWrap(root.classList.contains("nowrap-code")); }
  let wrapStored = null;
  try { wrapStored = window.localStorage.getItem("labeling.wrap"); } catch (e) { /* storage off */ }
  setWrap(wrapStored !== "0");
  if (wrapButton) wrapButton.addEventListener("click", toggleWrap);

  // Syntax highlighting (highlight.js, loaded before this script; it fetches the highlighter)
  function highlightCode() {
    if (window.highlightCodeBlocks) window.highlightCodeBlocks(form.dataset.highlighter, function () { root.classList.add("code-highlighted"); });
  }

  form.addEventListener("change", function (event) {
    // a rank set with the mouse means the annotator is ranking
    if (ranking && event.target.tagName === "SELECT" && event.target.value) {
      const choice = document.getElementById("choice-ranking");
      if (choice && !choice.checked) choice.checked = true;
    }
    syncStrength();
    syncChosen();
  });
  form.addEventListener("submit", function (event) {
    if (readonly) { event.preventDefault(); return; }
    submitting = true;
    document.getElementById("time-spent").value = Math.round(timeOffset + performance.now() - started);
  });
  document.getElementById("open-guidelines").addEventListener("click", function () { dialog.showModal(); });

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
    if (typing) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); }
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit("submit"); }
      return;
    }
    if (dialog.open || event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    if (readonly) {
      if (key === "g") { dialog.showModal(); event.preventDefault(); }
      else if (key === "l") { toggleWrap(); event.preventDefault(); }
      return;
    }
    // U / W / O, then a reply's letter: flag that reply
    if (pendingFlag) {
      const flag = pendingFlag;
      pendingFlag = null;
      say("");
      if (key.length === 1 && letters.toLowerCase().includes(key)) {
        check("flag-" + key.toUpperCase() + "-" + flag);
        event.preventDefault();
        return;
      }
      if (key === "escape") { event.preventDefault(); return; }
    }
    const digit = /^(Digit|Numpad)([1-9])$/.exec(event.code || "");
    let handled = true;
    if (event.shiftKey && digit && Number(digit[2]) <= 4) check("strength-" + digit[2]);  // strength; in ranking tasks too
    else if (key === "enter") submit("submit");
    else if (key === "s") submit("skip");
    else if (key === "g") dialog.showModal();
    else if (key === "l") toggleWrap();
    else if (key === "r") document.getElementById("rationale").focus();
    else if (key === "t") check("choice-tie");
    else if (key === "x") check("choice-both_bad");
    else if (FLAG_KEYS[key]) {
      pendingFlag = FLAG_KEYS[key];
      say("Flag “" + pendingFlag.replace("_", " ") + "”: press the reply's letter (" + letters[0] + "–" + letters[letters.length - 1] + "), Esc to cancel.");
    }
    else if (!ranking && (key === "a" || key === "b")) check("choice-" + key.toUpperCase());
    else if (!ranking && key >= "1" && key <= "4" && key.length === 1) check("strength-" + key);
    else if (ranking && letters.toLowerCase().includes(key) && key.length === 1) selectReply(key.toUpperCase());
    else if (ranking && selectedReply && key.length === 1 && key >= "1" && key <= String(letters.length)) {
      document.getElementById("rank-" + selectedReply).value = key;
      check("choice-ranking");
    } else handled = false;
    if (handled) event.preventDefault();
  });
  syncStrength();
  syncChosen();
  highlightCode();
})();
