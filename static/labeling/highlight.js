// Syntax highlighting of the code blocks in rendered markdown, for the comparison and live
// pages (compare.js) and the console's task page. highlight.js (bundled under static/) is
// fetched only when the page has a code block. It reads each block's text (textContent) and
// writes escaped spans, so reply HTML is never parsed; blocks with markup inside are left alone.
window.highlightCodeBlocks = function (url, done) {
  "use strict";
  const blocks = Array.prototype.filter.call(document.querySelectorAll(".markdown pre > code"), function (code) {
    return code.children.length === 0 && code.textContent.length <= 30000;
  });
  if (!blocks.length || !url) return;
  const script = document.createElement("script");
  script.src = url;
  script.onload = function () {
    const hljs = window.hljs;
    if (!hljs) return;
    hljs.configure({ ignoreUnescapedHTML: true });
    blocks.forEach(function (code) {
      const named = /\blanguage-\S+/.test(code.className);
      if (!named && code.textContent.length > 5000) return;  // guessing the language of long text is slow
      try { hljs.highlightElement(code); } catch (e) { /* leave the block plain */ }
    });
    if (done) done();
  };
  document.head.appendChild(script);
};
