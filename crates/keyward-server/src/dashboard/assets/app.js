// keyward dashboard: the little behaviour pages need. Loaded from /static (the CSP allows no
// inline script). Everything works without it, except the copy button.
"use strict";

document.addEventListener("click", function (ev) {
  const btn = ev.target.closest("[data-copy]");
  if (!btn) return;
  const src = document.getElementById(btn.getAttribute("data-copy"));
  if (!src) return;
  const text = src.textContent.trim();
  const done = function () {
    const label = btn.textContent;
    btn.textContent = "Copied";
    btn.classList.add("copied");
    setTimeout(function () { btn.textContent = label; btn.classList.remove("copied"); }, 2000);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { selectText(src); });
  } else {
    // Plain HTTP on a non-local address: select the text so Ctrl+C copies it.
    selectText(src);
    try { if (document.execCommand("copy")) done(); } catch (e) { /* the selection stays */ }
  }
});

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

// Relative times ("3 days ago") carry the exact UTC time in their title; show it in the
// viewer's local time zone too.
document.querySelectorAll("time[datetime]").forEach(function (t) {
  const d = new Date(t.getAttribute("datetime"));
  if (!isNaN(d)) t.title = d.toLocaleString() + " (" + t.title + ")";
});
