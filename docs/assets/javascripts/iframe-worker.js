/* Web Workers for the docs site read from disk (file://).

   Chromium refuses `new Worker(url)` on a page opened from a file, and the site's search runs in a
   worker. Material's offline plugin would load a shim for it from unpkg.com, which a machine without
   network cannot reach; this is a local one (after squidfunk/iframe-worker, MIT). On file:// only, it
   replaces `Worker` by a worker that runs its script in a hidden iframe of the same page: the script's
   `postMessage`, `addEventListener("message")` and `importScripts` (which returns a promise) talk to the
   page through the iframe's window. Over http(s) it does nothing. */
(function () {
  "use strict";
  if (location.protocol !== "file:") {
    return;
  }

  function load(doc, url) {
    return new Promise(function (resolve, reject) {
      var script = doc.createElement("script");
      script.src = new URL(url, location.href).href;
      script.onload = function () { resolve(); };
      script.onerror = function () { reject(new Error("iframe-worker: cannot load " + url)); };
      doc.head.appendChild(script);
    });
  }

  function IFrameWorker(url) {
    var target = new EventTarget();
    var frame = document.createElement("iframe");
    frame.hidden = true;
    frame.tabIndex = -1;
    frame.setAttribute("aria-hidden", "true");
    (document.body || document.documentElement).appendChild(frame);
    var inner = frame.contentWindow;
    var queue = [];
    var ready = false;

    function deliver(to, data) {
      setTimeout(function () {
        var event = new MessageEvent("message", { data: data });
        to.dispatchEvent(event);
        if (to === target && typeof target.onmessage === "function") {
          target.onmessage(event);
        }
      }, 0);
    }

    // the worker's side: what its script sees as its global scope
    inner.postMessage = function (data) { deliver(target, data); };
    inner.importScripts = function () {
      var urls = Array.prototype.slice.call(arguments);
      return urls.reduce(function (done, u) {
        return done.then(function () { return load(inner.document, u); });
      }, Promise.resolve());
    };

    // the page's side: the Worker interface
    target.onmessage = null;
    target.onerror = null;
    target.postMessage = function (data) {
      if (ready) {
        deliver(inner, data);
      } else {
        queue.push(data);
      }
    };
    target.terminate = function () { frame.remove(); };

    load(inner.document, url).then(function () {
      ready = true;
      queue.splice(0).forEach(function (data) { deliver(inner, data); });
    }, function (error) {
      var event = new ErrorEvent("error", { message: error.message, error: error });
      target.dispatchEvent(event);
      if (typeof target.onerror === "function") {
        target.onerror(event);
      }
    });
    return target;
  }

  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
