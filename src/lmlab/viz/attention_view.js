// The attention views of `lmlab attention`: head view, model view and neuron view over the data
// embedded in #attention-data. Token text is only ever set with textContent (never as HTML).
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("attention-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLOURS = ["#1c7ed6", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599",
                   "#f08c00", "#5c940d", "#862e9c", "#d6336c", "#1864ab", "#a61e4d"];
  const ROW_HEIGHT = 22, LEFT_X = 280, RIGHT_X = 540, MIN_WEIGHT = 0.001;
  const STACK_NAMES = { encoder: "Encoder", decoder: "Decoder", cross: "Cross" };

  const state = {
    view: document.body.dataset.initialView || "head",
    stack: 0,
    layer: 0,
    heads: new Set(DATA.heads.map(function (_, i) { return i; })),
    filter: "all",
    neuron: { layer: 0, head: 0, query: 0 },
    zoom: null,
  };

  function $(id) { return document.getElementById(id); }
  function stack() { return DATA.stacks[state.stack]; }
  function queryTokens() { return DATA.tokens[stack().queries_from]; }
  function keyTokens() { return DATA.tokens[stack().keys_from]; }
  function colour(head) { return COLOURS[head % COLOURS.length]; }

  function element(tag, attributes, text) {
    const node = tag === "svg-line" || tag === "svg-text" ? document.createElementNS(SVG_NS, tag.slice(4))
      : document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Token text as drawn: newlines and tabs made visible, an empty token shown as ∅.
  function shown(text) { return text.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅"; }

  function fillSelect(select, labels, selected) {
    select.replaceChildren();
    labels.forEach(function (label, i) {
      const option = element("option", { value: String(i) }, label);
      option.selected = i === selected;
      select.appendChild(option);
    });
  }

  // Classes a token carries: generated text, sentence B.
  function tokenClasses(side, index) {
    const classes = [];
    const generated = DATA.generated_from[side];
    const segment = DATA.segment_b_from[side];
    if (generated !== undefined && index >= generated) classes.push("generated");
    if (segment !== undefined && index >= segment) classes.push("segment-b");
    return classes;
  }

  // Whether the pair filter (A → B, B → A) lets the line query → key through.
  function passesFilter(query, key) {
    const s = stack();
    const boundary = DATA.segment_b_from[s.queries_from];
    if (state.filter === "all" || boundary === undefined || s.queries_from !== s.keys_from) return true;
    if (state.filter === "ab") return query < boundary && key >= boundary;
    return query >= boundary && key < boundary;
  }

  // ------------------------------------------------------------------------------ head view
  function renderHeadToggles() {
    const box = $("head-toggles");
    box.replaceChildren();
    DATA.heads.forEach(function (head, i) {
      const button = element("button", { type: "button", "data-head": String(i), "aria-pressed": String(state.heads.has(i)) },
        "head " + head);
      button.className = "head-toggle" + (state.heads.has(i) ? " active" : "");
      button.style.borderColor = colour(i);
      if (state.heads.has(i)) button.style.background = colour(i);
      button.addEventListener("click", function () {
        if (state.heads.has(i)) state.heads.delete(i); else state.heads.add(i);
        renderHeadToggles();
        renderHeadView();
      });
      box.appendChild(button);
    });
  }

  function renderHeadView() {
    const s = stack();
    const svg = $("head-svg");
    const queries = queryTokens(), keys = keyTokens();
    const rows = Math.max(queries.length, keys.length);
    svg.replaceChildren();
    svg.setAttribute("width", String(RIGHT_X + 280));
    svg.setAttribute("height", String(rows * ROW_HEIGHT + 20));
    const weights = s.weights[state.layer];
    state.heads.forEach(function (head) {
      weights[head].forEach(function (row, query) {
        row.forEach(function (weight, key) {
          if (weight < MIN_WEIGHT || !passesFilter(query, key)) return;
          svg.appendChild(element("svg-line", {
            class: "attention", x1: String(LEFT_X + 6), y1: String(y(query) - 4), x2: String(RIGHT_X - 6),
            y2: String(y(key) - 4), stroke: colour(head), "stroke-opacity": weight.toFixed(4),
            "data-query": String(query), "data-key": String(key), "data-head": String(head),
          }));
        });
      });
    });
    drawBoundary(svg, s.queries_from, LEFT_X - 200, LEFT_X);
    drawBoundary(svg, s.keys_from, RIGHT_X, RIGHT_X + 200);
    queries.forEach(function (text, i) { svg.appendChild(tokenText(text, s.queries_from, i, "query")); });
    keys.forEach(function (text, i) { svg.appendChild(tokenText(text, s.keys_from, i, "key")); });
  }

  function y(index) { return 20 + index * ROW_HEIGHT; }

  function drawBoundary(svg, side, x1, x2) {
    const boundary = DATA.segment_b_from[side];
    if (boundary === undefined) return;
    const at = String(y(boundary) - ROW_HEIGHT + 6);
    svg.appendChild(element("svg-line", { class: "segment-boundary", x1: String(x1), x2: String(x2), y1: at, y2: at }));
  }

  function tokenText(text, side, index, role) {
    const left = role === "query";
    const node = element("svg-text", {
      x: String(left ? LEFT_X : RIGHT_X), y: String(y(index)), "text-anchor": left ? "end" : "start",
      "data-index": String(index), "data-role": role,
    }, shown(text));
    node.setAttribute("class", ["token", role].concat(tokenClasses(side, index)).join(" "));
    node.addEventListener("mouseenter", function () { highlight(side, index, node); });
    node.addEventListener("mouseleave", clearHighlight);
    if (left) node.addEventListener("click", function () { openNeuron(index); });
    return node;
  }

  // Hovering a token highlights every line it sends (as a query) and receives (as a key).
  function highlight(side, index, node) {
    const s = stack();
    node.classList.add("hovered");
    $("head-svg").querySelectorAll("line.attention").forEach(function (line) {
      const mine = (s.queries_from === side && Number(line.dataset.query) === index) ||
        (s.keys_from === side && Number(line.dataset.key) === index);
      line.classList.toggle("highlighted", mine);
      line.classList.toggle("dimmed", !mine);
    });
  }

  function clearHighlight() {
    const svg = $("head-svg");
    svg.querySelectorAll(".hovered").forEach(function (node) { node.classList.remove("hovered"); });
    svg.querySelectorAll("line.attention").forEach(function (line) {
      line.classList.remove("highlighted", "dimmed");
    });
  }

  // ----------------------------------------------------------------------------- model view
  function renderModelView() {
    const s = stack();
    const grid = $("model-grid");
    grid.replaceChildren();
    grid.style.gridTemplateColumns = "auto repeat(" + DATA.heads.length + ", 88px)";
    grid.appendChild(element("span"));
    DATA.heads.forEach(function (head) { grid.appendChild(element("span", { class: "model-row-label" }, "head " + head)); });
    DATA.layers.forEach(function (layer, l) {
      grid.appendChild(element("span", { class: "model-row-label" }, "layer " + layer));
      DATA.heads.forEach(function (head, h) {
        const cell = element("div", { class: "model-cell", "data-layer": String(l), "data-head": String(h),
          title: "layer " + layer + ", head " + head });
        const canvas = element("canvas");
        drawMap(canvas, s.weights[l][h], colour(h), 1);
        cell.appendChild(canvas);
        cell.addEventListener("click", function () { openZoom(l, h); });
        grid.appendChild(cell);
      });
    });
    if (state.zoom) openZoom(state.zoom[0], state.zoom[1]); else $("model-zoom").hidden = true;
  }

  // A heat map of weights (T × S) into canvas: `scale` pixels a cell, plus `margin` for labels.
  function drawMap(canvas, weights, hue, scale, margin) {
    const offset = margin || 0;
    const rows = weights.length, columns = weights[0].length;
    canvas.width = offset + columns * scale;
    canvas.height = offset + rows * scale;
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.fillStyle = hue;
    weights.forEach(function (row, i) {
      row.forEach(function (weight, j) {
        context.globalAlpha = Math.min(1, weight);
        context.fillRect(offset + j * scale, offset + i * scale, scale, scale);
      });
    });
    context.globalAlpha = 1;
    return context;
  }

  function openZoom(l, h) {
    state.zoom = [l, h];
    const s = stack();
    const zoom = $("model-zoom");
    zoom.hidden = false;
    $("model-zoom-title").textContent = STACK_NAMES[s.name] + " attention, layer " + DATA.layers[l] + ", head " + DATA.heads[h];
    document.querySelectorAll(".model-cell").forEach(function (cell) {
      cell.classList.toggle("selected", Number(cell.dataset.layer) === l && Number(cell.dataset.head) === h);
    });
    const margin = 110, scale = 22;
    const context = drawMap($("model-zoom-canvas"), s.weights[l][h], colour(h), scale, margin);
    context.fillStyle = "#222";
    context.font = "12px monospace";
    context.textAlign = "right";
    queryTokens().forEach(function (text, i) { context.fillText(clip(text), margin - 4, margin + i * scale + 15); });
    keyTokens().forEach(function (text, j) {
      context.save();
      context.translate(margin + j * scale + 15, margin - 4);
      context.rotate(-Math.PI / 2);
      context.textAlign = "left";
      context.fillText(clip(text), 0, 0);
      context.restore();
    });
  }

  function clip(text) { const s = shown(text); return s.length > 14 ? s.slice(0, 13) + "…" : s; }

  // ---------------------------------------------------------------------------- neuron view
  function openNeuron(query) {
    state.neuron = { layer: state.layer, head: state.heads.size ? Math.min.apply(null, Array.from(state.heads)) : 0, query: query };
    showView("neuron");
  }

  function renderNeuronControls() {
    fillSelect($("neuron-layer"), DATA.layers.map(function (l) { return "layer " + l; }), state.neuron.layer);
    fillSelect($("neuron-head"), DATA.heads.map(function (h) { return "head " + h; }), state.neuron.head);
    fillSelect($("neuron-query"), queryTokens().map(function (t, i) { return i + ": " + shown(t); }), state.neuron.query);
  }

  function renderNeuronView() {
    renderNeuronControls();
    const s = stack(), n = state.neuron;
    const q = s.queries[n.layer][n.head][n.query];
    const keys = s.keys[n.layer][n.head];
    const scores = s.scores[n.layer][n.head][n.query];
    const weights = s.weights[n.layer][n.head][n.query];
    const scale = Math.sqrt(q.length);
    const table = $("neuron-table");
    $("bias-note").hidden = !s.has_position_bias;
    table.replaceChildren();
    const header = element("tr");
    ["key token", "key vector k", "q × k", "q·k/√d"].concat(s.has_position_bias ? ["bias"] : [], ["softmax"])
      .forEach(function (label) { header.appendChild(element("th", {}, label)); });
    const queryRow = element("tr", { class: "query-row" });
    queryRow.appendChild(element("td", { class: "token-cell" }, shown(queryTokens()[n.query])));
    queryRow.appendChild(vectorCell(q, "query-vector"));
    table.appendChild(element("tr")).appendChild(element("th", { colspan: "2" }, "query vector q"));
    table.appendChild(queryRow);
    table.appendChild(header);
    keys.forEach(function (k, j) {
      const product = k.map(function (value, d) { return value * q[d]; });
      const dot = product.reduce(function (a, b) { return a + b; }, 0) / scale;
      const row = element("tr", { class: "key-row", "data-key": String(j) });
      row.appendChild(element("td", { class: ["token-cell"].concat(tokenClasses(s.keys_from, j)).join(" ") }, shown(keyTokens()[j])));
      row.appendChild(vectorCell(k, "key-vector"));
      row.appendChild(vectorCell(product, "product"));
      row.appendChild(numberCell(dot, "dot", dot));
      if (s.has_position_bias) {
        row.appendChild(scores[j] === null ? element("td", { class: "bias" }, "masked") : numberCell(scores[j] - dot, "bias"));
      }
      const softmax = numberCell(weights[j], "softmax", weights[j]);
      softmax.style.background = "rgba(28, 126, 214, " + Math.min(1, weights[j]).toFixed(3) + ")";
      row.appendChild(softmax);
      table.appendChild(row);
    });
  }

  function numberCell(value, kind, exact) {
    const cell = element("td", { class: kind, title: String(value) }, value.toFixed(4));
    if (exact !== undefined) cell.dataset.value = String(exact);
    return cell;
  }

  // A vector as a row of coloured cells: blue negative, red positive, scaled by its largest |value|.
  function vectorCell(vector, kind) {
    const cell = element("td", { class: "vector " + kind });
    const largest = Math.max.apply(null, vector.map(Math.abs).concat([1e-12]));
    vector.forEach(function (value) {
      const strength = Math.abs(value) / largest;
      const square = element("span", { class: "cell", title: value.toFixed(5) });
      square.style.background = value >= 0 ? "rgba(224, 49, 49, " + strength.toFixed(3) + ")"
        : "rgba(28, 126, 214, " + strength.toFixed(3) + ")";
      cell.appendChild(square);
    });
    return cell;
  }

  // --------------------------------------------------------------------------- wiring
  function showView(view) {
    state.view = view;
    ["head", "model", "neuron"].forEach(function (name) { $(name + "-view").hidden = name !== view; });
    document.querySelectorAll("#view-tabs button").forEach(function (button) {
      button.classList.toggle("selected", button.dataset.view === view);
    });
    renderAll();
  }

  function renderAll() {
    if (state.view === "head") renderHeadView();
    if (state.view === "model") renderModelView();
    if (state.view === "neuron") renderNeuronView();
  }

  function setup() {
    fillSelect($("stack-select"), DATA.stacks.map(function (s) { return STACK_NAMES[s.name]; }), 0);
    $("stack-label").hidden = DATA.stacks.length < 2;
    fillSelect($("layer-select"), DATA.layers.map(function (l) { return "layer " + l; }), 0);
    const paired = Object.keys(DATA.segment_b_from).length > 0;
    $("pair-filter-label").hidden = !paired;
    $("legend").querySelector(".generated").hidden = Object.keys(DATA.generated_from).length === 0;
    $("legend").querySelector(".segment-b").hidden = !paired;
    $("stack-select").addEventListener("change", function (event) {
      state.stack = Number(event.target.value);
      state.neuron.query = 0;
      state.zoom = null;
      renderAll();
    });
    $("layer-select").addEventListener("change", function (event) { state.layer = Number(event.target.value); renderHeadView(); });
    $("pair-filter").addEventListener("change", function (event) { state.filter = event.target.value; renderHeadView(); });
    $("model-zoom-close").addEventListener("click", function () { state.zoom = null; renderModelView(); });
    ["layer", "head", "query"].forEach(function (field) {
      $("neuron-" + field).addEventListener("change", function (event) {
        state.neuron[field] = Number(event.target.value);
        renderNeuronView();
      });
    });
    document.querySelectorAll("#view-tabs button").forEach(function (button) {
      button.addEventListener("click", function () { showView(button.dataset.view); });
    });
    renderHeadToggles();
    showView(state.view);
  }

  setup();
})();
