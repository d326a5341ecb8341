// The tab's icon shows the user's unread count (from notifications.js's "chat:unread"
// event): the site's icon with a red badge, drawn on a canvas; the plain icon at 0.
(function () {
  "use strict";
  const link = document.getElementById("favicon");
  if (!link) return;
  const plain = link.href;
  const icon = new Image();
  icon.src = plain; // same origin: the canvas stays readable
  let wanted = 0;

  function draw() {
    if (wanted === 0) {
      link.href = plain;
      return;
    }
    const size = 32;
    const canvas = document.createElement("canvas");
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    if (icon.complete && icon.naturalWidth) ctx.drawImage(icon, 0, 0, size, size);
    const label = wanted > 99 ? "99+" : String(wanted);
    ctx.fillStyle = "#c33";
    ctx.beginPath();
    ctx.arc(size - 11, 11, 11, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.font = "bold " + (label.length > 2 ? 10 : label.length > 1 ? 13 : 16) + "px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(label, size - 11, 12);
    link.href = canvas.toDataURL("image/png");
  }

  icon.addEventListener("load", draw);
  document.addEventListener("chat:unread", (e) => {
    wanted = e.detail.total;
    draw();
  });
})();
