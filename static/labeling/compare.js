// Keyboard shortcuts and time on task for the comparison page. No inline script (CSP).
(function () {
  "use strict";
  const form = document.getElementById("judgement-form");
  if (!form) return;
  const started = performance.now();
  const ranking = form.dataset.ranking === "1";
  const letters = "ABCDEFGH".slice(0, Number(form.dataset.replies));
  const dialog = document.getElementById("guidelines-dialog");
  let selectedReply = null;
  let submitting = false;

  function check(id) {
    const input = document.getElementById(id);
    if (input) { input.checked = !input.checked || input.type === "radio"; input.dispatchEvent(new Event("change", { bubbles: true })); }
  }
  function syncStrength() {
    const choice = form.querySelector("input[name=choice]:checked");
    const level = choice && (choice.value === "tie" || choice.value === "both_bad");
    document.querySelectorAll("input[name=strength]").forEach(function (input) {
      input.disabled = level;
      if (level) input.checked = false;
    });
  }
  function selectReply(letter) {
    selectedReply = letter;
    document.querySelectorAll(".reply").forEach(function (el) {
      el.classList.toggle("selected", el.dataset.letter === letter);
    });
  }
  function submit(action) {
    if (submitting) return;
    submitting = true;
    document.getElementById("time-spent").value = Math.round(performance.now() - started);
    if (action === "skip") {
      document.getElementById("skip-button").click();
    } else {
      form.requestSubmit(document.getElementById("submit-button"));
    }
  }

  form.addEventListener("change", syncStrength);
  form.addEventListener("submit", function () {
    submitting = true;
    document.getElementById("time-spent").value = Math.round(performance.now() - started);
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
    let handled = true;
    if (key === "enter") submit("submit");
    else if (key === "s") submit("skip");
    else if (key === "g") dialog.showModal();
    else if (key === "r") document.getElementById("rationale").focus();
    else if (key === "t") check("choice-tie");
    else if (key === "x") check("choice-both_bad");
    else if (key === "u") check("flag-unsafe");
    else if (key === "w") check("flag-factually_wrong");
    else if (key === "o") check("flag-other");
    else if (!ranking && (key === "a" || key === "b")) check("choice-" + key.toUpperCase());
    else if (!ranking && key >= "1" && key <= "4") check("strength-" + key);
    else if (ranking && letters.toLowerCase().includes(key) && key.length === 1) selectReply(key.toUpperCase());
    else if (ranking && selectedReply && key >= "1" && key <= String(letters.length)) {
      document.getElementById("rank-" + selectedReply).value = key;
      check("choice-ranking");
    } else handled = false;
    if (handled) event.preventDefault();
  });
  syncStrength();
})();
