// reviewloop console: keyboard shortcuts, a guard against double submits, a JSON check before
// sending, and the lease countdown. Every page also works without this file.
(function () {
  "use strict";

  var answer = document.getElementById("answer-form");
  var skip = document.getElementById("skip-form");

  function isTyping(element) {
    if (!element) return false;
    if (element.tagName === "TEXTAREA" || element.tagName === "SELECT" || element.isContentEditable) return true;
    return element.tagName === "INPUT" &&
      ["radio", "checkbox", "hidden", "submit", "button"].indexOf(element.type) < 0;
  }

  function send(form) {
    if (!form) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.isComposing || event.defaultPrevented) return;
    var target = event.target;
    if (isTyping(target)) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && answer) {
        event.preventDefault();
        send(answer);
      } else if (event.key === "Escape") {
        target.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey) return;
    // A focused button or link does what Enter does to it.
    if (event.key === "Enter" && (target.tagName === "BUTTON" || target.tagName === "A")) return;
    if (answer) {
      if (/^[1-9]$/.test(event.key)) {
        var radio = answer.querySelector('input[type="radio"][data-key="' + event.key + '"]');
        if (radio) {
          event.preventDefault();
          radio.checked = true;
          radio.focus();
        }
      } else if (event.key === "Enter") {
        event.preventDefault();
        send(answer);
      } else if (event.key === "s" || event.key === "S") {
        event.preventDefault();
        send(skip);
      }
    } else if (event.key === "Enter") {
      var next = document.getElementById("start") || document.getElementById("next");
      if (next) {
        event.preventDefault();
        next.click();
      }
    }
  });

  // One submission per page: a double click or a held Enter sends once (the server also
  // refuses a second answer, this spares the round trip).
  Array.prototype.forEach.call(document.querySelectorAll("form"), function (form) {
    form.addEventListener("submit", function (event) {
      if (form.getAttribute("data-sent")) {
        event.preventDefault();
        return;
      }
      var json = form.querySelector("textarea[data-json]");
      if (json) {
        var error = form.querySelector(".json-error");
        try {
          JSON.parse(json.value);
          if (error) error.hidden = true;
        } catch (problem) {
          event.preventDefault();
          if (error) {
            error.textContent = "This is not valid JSON: " + problem.message;
            error.hidden = false;
          }
          json.focus();
          return;
        }
      }
      form.setAttribute("data-sent", "1");
      document.body.classList.add("sending");
    });
  });

  // Coming back with the browser's Back button shows a live page again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    Array.prototype.forEach.call(document.querySelectorAll("form[data-sent]"), function (form) {
      form.removeAttribute("data-sent");
    });
    document.body.classList.remove("sending");
  });

  // Entities: a span's new label or its removal shows in the text at once.
  Array.prototype.forEach.call(document.querySelectorAll("[data-span]"), function (control) {
    control.addEventListener("change", function () {
      var mark = document.getElementById("span-" + control.getAttribute("data-span"));
      if (!mark) return;
      if (control.tagName === "SELECT") {
        var tag = mark.querySelector(".tag");
        if (tag) tag.textContent = control.value;
      } else {
        mark.classList.toggle("removed", control.checked);
      }
    });
  });

  var lease = document.querySelector("[data-expires]");
  if (lease) {
    var expires = Number(lease.getAttribute("data-expires"));
    var tick = function () {
      var left = Math.round((expires - Date.now()) / 1000);
      if (left <= 0) {
        lease.textContent = "Your time for this item ran out: it may have gone to someone else.";
        lease.classList.add("expired");
        return;
      }
      var minutes = Math.floor(left / 60);
      var seconds = left % 60;
      lease.textContent = (minutes >= 60
        ? Math.floor(minutes / 60) + " h " + (minutes % 60) + " min"
        : minutes + ":" + (seconds < 10 ? "0" : "") + seconds) + " left for this item";
      window.setTimeout(tick, 1000);
    };
    tick();
  }

  // Images with detections or a document's fields: a rejected detection is drawn struck out,
  // and the box of the row under the pointer or the focus stands out.
  Array.prototype.forEach.call(document.querySelectorAll("[data-area]"), function (row) {
    var area = document.getElementById(row.getAttribute("data-area"));
    if (!area) return;
    var sync = function () {
      var rejected = row.querySelector('input[value="rejected"]:checked') !== null;
      area.classList.toggle("rejected", rejected);
      row.classList.toggle("rejected", rejected);
    };
    row.addEventListener("change", sync);
    sync();
    var focus = function (on) { return function () { area.classList.toggle("focus", on); }; };
    row.addEventListener("mouseenter", focus(true));
    row.addEventListener("mouseleave", focus(false));
    row.addEventListener("focusin", focus(true));
    row.addEventListener("focusout", focus(false));
  });

  // Detections: a number key turns that detection between right and wrong.
  var detections = document.querySelector(".detections");
  if (detections) {
    document.addEventListener("keydown", function (event) {
      if (event.altKey || event.ctrlKey || event.metaKey || isTyping(event.target)) return;
      if (!/^[1-9]$/.test(event.key)) return;
      var row = detections.querySelectorAll(".detection")[Number(event.key) - 1];
      if (!row) return;
      event.preventDefault();
      var wrong = row.querySelector('input[value="rejected"]');
      var right = row.querySelector('input[value="confirmed"]');
      (wrong.checked ? right : wrong).checked = true;
      row.dispatchEvent(new Event("change"));
    });
  }
})();
