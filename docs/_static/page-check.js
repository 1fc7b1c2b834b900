// After load, record on <body> how many pictures the page holds and how many failed to decode,
// so a headless browser's --dump-dom can check a built page (tests/test_docs.py).
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
  document.body.setAttribute("data-output-images", String(document.querySelectorAll(".cell_output img").length));
});
