// Small behaviours of the console pages. No inline scripts: this file is loaded with
// <script src> so that the pages work under a Content Security Policy of script-src 'self'.
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain http (a local gateway): the Clipboard API is not available there.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      try {
        if (document.execCommand("copy")) { resolve(); } else { reject(new Error("copy refused")); }
      } catch (error) {
        reject(error);
      } finally {
        document.body.removeChild(area);
      }
    });
  }

  function flash(button, label) {
    var original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = label;
    window.setTimeout(function () { button.textContent = original; }, 1600);
  }

  // <button data-copy="element-id">: copies that element's text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.getElementById(button.dataset.copy);
    if (!source) { return; }
    copyText(source.textContent.trim()).then(
      function () { flash(button, "Copied"); },
      function () {
        // Could not copy: select the text so that Ctrl+C does it.
        var range = document.createRange();
        range.selectNodeContents(source);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        flash(button, "Press Ctrl+C");
      }
    );
  });

  // <button data-add-row="prefix" data-template="id" data-target="id">: adds one form of
  // a Django formset from its <template>, renumbering __prefix__ and TOTAL_FORMS.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-add-row]");
    if (!button) { return; }
    var prefix = button.dataset.addRow;
    var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
    var max = document.getElementById("id_" + prefix + "-MAX_NUM_FORMS");
    var template = document.getElementById(button.dataset.template);
    var target = document.getElementById(button.dataset.target);
    if (!total || !template || !target) { return; }
    var index = parseInt(total.value, 10);
    if (max && index >= parseInt(max.value, 10)) {
      flash(button, "No more rows");
      return;
    }
    var html = template.innerHTML.replace(/__prefix__/g, String(index));
    target.insertAdjacentHTML("beforeend", html);
    total.value = String(index + 1);
    var inputs = target.lastElementChild && target.lastElementChild.querySelectorAll("input");
    if (inputs && inputs.length) { inputs[0].focus(); }
  });

  // <select id="id_transport">: show only the fields of the chosen transport. Elements
  // carry data-transport="name ..."; without this script every field stays visible.
  function showTransport(select) {
    var chosen = select.value;
    document.querySelectorAll("[data-transport]").forEach(function (element) {
      var wanted = element.dataset.transport.split(" ");
      element.hidden = wanted.indexOf(chosen) === -1;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.id === "id_transport") { showTransport(event.target); }
  });
  function init() {
    var select = document.getElementById("id_transport");
    if (select) { showTransport(select); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
