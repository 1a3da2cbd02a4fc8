// Settings page: build a node package (with a progress state and a clear error) and remove
// nodes. Every request carries the page's CSRF token.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  function fileNameOf(resp, fallback) {
    var cd = resp.headers.get("Content-Disposition") || "";
    // RFC 6266: the UTF-8 filename* first, the plain ASCII filename otherwise.
    var u = /filename\*=UTF-8''([^;\s]+)/i.exec(cd);
    if (u) {
      try { return decodeURIComponent(u[1]); } catch (e) { /* fall through */ }
    }
    var m = /filename="([^"]+)"/.exec(cd);
    return m ? m[1] : fallback;
  }

  function errorOf(resp) {
    return resp.json().then(function (j) { return j.error || resp.statusText; },
      function () { return resp.status + " " + resp.statusText; });
  }

  var form = document.getElementById("build-form");
  var status = document.getElementById("build-status");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var button = document.getElementById("build");
      var data = {};
      new FormData(form).forEach(function (v, k) { if (v !== "") { data[k] = v; } });
      data.no_enrollment = !!(document.getElementById("no_enrollment") || {}).checked;
      data.download_link = !!(document.getElementById("download_link") || {}).checked;
      // An upgrade package is the same for every node: only its format and file name apply.
      if ((document.getElementById("upgrade") || {}).checked) {
        data = { upgrade: true, format: data.format, package_name: data.package_name };
      }
      var linkBox = document.getElementById("download-link");
      if (linkBox) { linkBox.hidden = true; }
      button.disabled = true;
      status.className = "";
      status.textContent = "⏳ Building the package…";
      var started = Date.now();
      fetch("/api/fleet/cluster/packages", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(data)
      }).then(function (resp) {
        if (!resp.ok) { return errorOf(resp).then(function (e) { throw new Error(e); }); }
        if (data.download_link) {
          return resp.json().then(function (j) {
            var d = j.download;
            document.getElementById("download-curl").textContent = d.curl;
            document.getElementById("download-install").textContent = d.install;
            linkBox.hidden = false;
            status.className = "ok-text";
            status.textContent = "✅ Built " + d.file_name + ": it waits on this node for one download, until " +
              d.expires + ".";
          });
        }
        var name = fileNameOf(resp, "FleetServerClusterNode.pkg");
        if (resp.headers.get("X-Package-Kind") === "upgrade") {
          var version = resp.headers.get("X-Package-Version") || "";
          return resp.blob().then(function (blob) {
            var url = URL.createObjectURL(blob);
            var a = document.createElement("a");
            a.href = url; a.download = name; a.style.display = "none";
            document.body.appendChild(a); a.click(); a.remove();
            setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
            status.className = "ok-text";
            status.textContent = "✅ Built the upgrade package " + name + " (" + (blob.size / 1048576).toFixed(1) +
              " MB): it upgrades installed nodes to fleet-server " + version + " and carries no configuration or secret.";
          });
        }
        var until = resp.headers.get("X-Package-Expires") || "";
        var creds = resp.headers.get("X-Package-Credentials") || "";
        var enrollment = resp.headers.get("X-Package-Enrollment") || "";
        return resp.blob().then(function (blob) {
          var url = URL.createObjectURL(blob);
          var a = document.createElement("a");
          a.href = url; a.download = name; a.style.display = "none";
          document.body.appendChild(a); a.click(); a.remove();
          setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
          var secs = ((Date.now() - started) / 1000).toFixed(1);
          status.className = "ok-text";
          status.textContent = "✅ Built " + name + " (" + (blob.size / 1048576).toFixed(1) +
            " MB in " + secs + " s)" + (until ? ", installable until " + until : "") + "." +
            (enrollment.indexOf("token ") === 0 ? " Single-use: it enrolls one node, once." :
              " ⚠️ Offline package: it carries the cluster's long-lived secrets.") +
            (creds === "shared with the primary" ? " ⚠️ The node carries the primary's backend credentials." : "");
        });
      }).catch(function (e) {
        status.className = "error";
        status.textContent = "❌ Build failed: " + e.message;
      }).finally(function () { button.disabled = false; });
    });
  }

  document.querySelectorAll("button.revoke").forEach(function (b) {
    b.addEventListener("click", function () {
      var id = b.getAttribute("data-token");
      if (!window.confirm("Revoke package " + id.slice(0, 12) + "? It will no longer enroll a node.")) { return; }
      b.disabled = true;
      fetch("/api/fleet/cluster/packages/" + encodeURIComponent(id), {
        method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }
      }).then(function (resp) {
        if (!resp.ok) { return errorOf(resp).then(function (e) { throw new Error(e); }); }
        var row = document.querySelector('tr[data-token="' + id + '"]');
        if (row) { row.remove(); }
        if (status) { status.className = ""; status.textContent = "🚫 Revoked package " + id.slice(0, 12) + "."; }
      }).catch(function (e) {
        b.disabled = false;
        if (status) { status.className = "error"; status.textContent = "❌ Revoke failed: " + e.message; }
      });
    });
  });

  document.querySelectorAll("button.remove").forEach(function (b) {
    b.addEventListener("click", function () {
      var id = b.getAttribute("data-node");
      if (!window.confirm("Remove " + id + " from the cluster?")) { return; }
      b.disabled = true;
      fetch("/api/fleet/cluster/nodes/" + encodeURIComponent(id), {
        method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }
      }).then(function (resp) {
        if (!resp.ok) { return errorOf(resp).then(function (e) { throw new Error(e); }); }
        var row = document.querySelector('tr[data-node="' + id + '"]');
        if (row) { row.remove(); }
        var n = document.getElementById("active-nodes");
        if (n && /^\d+$/.test(n.textContent)) { n.textContent = String(Math.max(0, +n.textContent - 1)); }
        if (status) { status.className = ""; status.textContent = "🗑 Removed " + id + "."; }
      }).catch(function (e) {
        b.disabled = false;
        if (status) { status.className = "error"; status.textContent = "❌ Remove failed: " + e.message; }
      });
    });
  });
})();
