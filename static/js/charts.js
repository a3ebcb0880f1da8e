// Charts of the monitoring pages, drawn with the vendored Chart.js from data in a
// <script type="application/json"> block (the CSP allows no inline script).
// A canvas names its data with data-source (the JSON block's id) and data-chart (a path
// in it: "request_rate", "latency.p95", "agent", "history"). Used by the service health page
// and by the deployment page's revisions chart (an HTMX fragment that refreshes itself).
(function () {
  "use strict";
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d"];

  function pick(data, path) {
    return path.split(".").reduce(function (node, key) {
      return node && node[key];
    }, data);
  }

  function hhmm(ms, withSeconds) {
    var d = new Date(ms);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    var text = (d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    return withSeconds ? text + ":" + pad(d.getUTCSeconds()) : text;
  }

  // Deployment markers: a dashed vertical line per deployment.
  var markerPlugin = {
    id: "deploymentMarkers",
    afterDatasetsDraw: function (chart, args, options) {
      var markers = options.markers || [];
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
      ctx.save();
      ctx.setLineDash([4, 3]);
      ctx.strokeStyle = "#6b7280";
      ctx.fillStyle = "#374151";
      ctx.font = "10px sans-serif";
      markers.forEach(function (m) {
        var px = x.getPixelForValue(m.at);
        if (px < area.left || px > area.right) return;
        ctx.beginPath();
        ctx.moveTo(px, area.top);
        ctx.lineTo(px, area.bottom);
        ctx.stroke();
        ctx.fillText(m.label, px + 2, area.top + 10);
      });
      ctx.restore();
    }
  };

  function datasets(series, kind) {
    if (kind === "history") {
      return Object.keys(series).map(function (id, i) {
        return {
          label: series[id].label + " failed",
          data: series[id].points.map(function (p) { return { x: p[0], y: p[2] }; }),
          borderColor: PALETTE[i % PALETTE.length],
          backgroundColor: PALETTE[i % PALETTE.length],
          stepped: true, pointRadius: 0
        };
      });
    }
    return Object.keys(series || {}).map(function (name, i) {
      return {
        label: name,
        data: series[name].map(function (p) { return { x: p[0], y: p[1] }; }),
        borderColor: PALETTE[i % PALETTE.length],
        backgroundColor: PALETTE[i % PALETTE.length],
        pointRadius: 0, borderWidth: 1.5, tension: 0.2
      };
    });
  }

  function draw(canvas) {
    if (canvas.chart || !window.Chart) return;
    var source = document.getElementById(canvas.getAttribute("data-source"));
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var path = canvas.getAttribute("data-chart");
    var series = path === "history" || path === "agent" ? data[path] : pick(data.series, path);
    // A rollout lasts minutes: its ticks need seconds to tell apart.
    var withSeconds = data.until - data.since < 3600 * 1000;
    canvas.chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: datasets(series, path) },
      options: {
        animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { type: "linear", min: data.since, max: data.until,
               ticks: { maxTicksLimit: 6, callback: function (v) { return hhmm(v, withSeconds); } } },
          y: { beginAtZero: true }
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 10 } },
          deploymentMarkers: { markers: data.markers || [] }
        }
      },
      plugins: [markerPlugin]
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  // A refreshed fragment replaces its canvases: free the old charts before they go, draw the
  // new ones once they are in the page.
  function destroyAll(root) {
    if (!root || !root.querySelectorAll) return;
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.chart) {
        canvas.chart.destroy();
        canvas.chart = null;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:beforeSwap", function (event) { destroyAll(event.detail.target); });
  document.addEventListener("htmx:afterSwap", function (event) {
    drawAll(event.target && event.target.isConnected ? event.target : document);
  });
})();
