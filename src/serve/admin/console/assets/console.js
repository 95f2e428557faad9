// The zdmap console's only script: confirmations before forms that change much, and the
// overview's refresh. Everything else works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  const question = (button && button.dataset.confirm) || form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const every = Number(document.body.dataset.refresh);
  if (every > 0) {
    window.setTimeout(() => window.location.reload(), every * 1000);
  }
});
