// SqueezeNet in the browser: decode a photo, preprocess it exactly as the Python package does
// (squeezenet/data/transforms.py), run the ONNX model with onnxruntime-web, rank the classes.
// A classic script: it defines globalThis.SqueezeNet (and module.exports under Node, for tests).
(function (root) {
  "use strict";

  const MAX_PIXELS = 64000000; // as transforms.MAX_PIXELS: larger images are refused
  const PILLOW_BITS = 22; // Pillow's fixed-point bits for 8-bit resampling (Resample.c)

  // Python's round(): halves go to the even neighbour (crop offsets and resized sides use it).
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function triangle(x) {
    x = Math.abs(x);
    return x < 1 ? 1 - x : 0;
  }

  // For each output pixel along one axis: its first input pixel, how many it reads and their
  // weights, as Pillow's precompute_coeffs (and PyTorch's antialiased bilinear) compute them.
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1);
    const support = filterScale; // the triangle's support (1) widened when shrinking
    const inverse = 1 / filterScale;
    const ksize = Math.ceil(support) * 2 + 1;
    const first = new Int32Array(outSize);
    const count = new Int32Array(outSize);
    const weights = new Float64Array(outSize * ksize);
    let largest = 0;
    for (let i = 0; i < outSize; i++) {
      const center = (i + 0.5) * scale;
      const lo = Math.max(Math.trunc(center - support + 0.5), 0);
      const n = Math.min(Math.trunc(center + support + 0.5), inSize) - lo;
      let total = 0;
      for (let j = 0; j < n; j++) {
        const w = triangle((j + lo - center + 0.5) * inverse);
        weights[i * ksize + j] = w;
        total += w;
      }
      for (let j = 0; j < n; j++) {
        if (total !== 0) weights[i * ksize + j] /= total;
        largest = Math.max(largest, weights[i * ksize + j]);
      }
      first[i] = lo;
      count[i] = n;
    }
    return { first, count, weights, ksize, largest };
  }

  // PyTorch's uint8 kernel keeps weights in int16: as many fractional bits as fit the largest.
  function int16Bits(largest) {
    let bits = 0;
    while (bits < 22 && Math.trunc(0.5 + largest * 2 ** (bits + 1)) < 1 << 15) bits++;
    return bits;
  }

  // One separable pass over RGB rows (horizontal) or columns (vertical), in fixed point.
  function resamplePass(src, width, height, outSize, horizontal, bits) {
    const c = coefficients(horizontal ? width : height, outSize);
    bits = bits || int16Bits(c.largest);
    const fixed = Float64Array.from(c.weights, (w) => Math.trunc(0.5 + w * 2 ** bits));
    const [outW, outH] = horizontal ? [outSize, height] : [width, outSize];
    const tap = horizontal ? 3 : width * 3; // bytes from one input of an output to the next
    const out = new Uint8Array(outW * outH * 3);
    const half = 2 ** (bits - 1);
    const unit = 2 ** bits;
    const clip = (sum) => Math.min(255, Math.max(0, Math.floor(sum / unit)));
    let o = 0;
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const i = horizontal ? x : y;
        const k = i * c.ksize;
        let at = horizontal ? (y * width + c.first[i]) * 3 : (c.first[i] * width + x) * 3;
        let [r, g, b] = [half, half, half];
        for (let j = 0; j < c.count[i]; j++, at += tap) {
          const w = fixed[k + j];
          r += src[at] * w;
          g += src[at + 1] * w;
          b += src[at + 2] * w;
        }
        out[o++] = clip(r);
        out[o++] = clip(g);
        out[o++] = clip(b);
      }
    }
    return out;
  }

  // Bilinear (triangle filter) resize of RGB pixels to w x h, in two passes whose order changes
  // the rounding. bits: PILLOW_BITS for Pillow's Image.resize, 0 for PyTorch's int16 weights.
  // PyTorch goes horizontal first; Pillow 13 goes vertical first when that removes more than
  // twice as many rows as the horizontal pass removes columns (Pillow pull request 9549; the
  // same bytes as Pillow 13.0 on 398 random sizes). Pillow before 13 always went horizontal first.
  function resize(rgb, width, height, w, h, bits) {
    const rows = height - h;
    const verticalFirst = bits === PILLOW_BITS && rows > 0 && rows > 2 * (width - w);
    let out = rgb;
    if (verticalFirst) {
      out = resamplePass(out, width, height, h, false, bits);
      return w === width ? out : resamplePass(out, width, h, w, true, bits);
    }
    if (w !== width) out = resamplePass(out, width, height, w, true, bits);
    if (h !== height) out = resamplePass(out, w, height, h, false, bits);
    return out;
  }

  // transforms.resized_size: the square, or the short side made `target`.
  function resizedSize(width, height, target, square) {
    if (square) return [target, target];
    const short = Math.min(width, height);
    const w = width === short ? target : roundHalfEven((width * target) / short);
    const h = height === short ? target : roundHalfEven((height * target) / short);
    return [w, h];
  }

  // The central crop x crop square of RGB pixels, padded with black when smaller.
  function centerCrop(rgb, width, height, crop) {
    const padW = Math.max(width, crop);
    const padH = Math.max(height, crop);
    let src = rgb;
    if (padW !== width || padH !== height) {
      src = new Uint8Array(padW * padH * 3);
      const left = Math.floor((padW - width) / 2);
      const top = Math.floor((padH - height) / 2);
      for (let y = 0; y < height; y++) {
        src.set(rgb.subarray(y * width * 3, (y + 1) * width * 3), ((top + y) * padW + left) * 3);
      }
    }
    const top = roundHalfEven((padH - crop) / 2);
    const left = roundHalfEven((padW - crop) / 2);
    const out = new Uint8Array(crop * crop * 3);
    for (let y = 0; y < crop; y++) {
      const from = ((top + y) * padW + left) * 3;
      out.set(src.subarray(from, from + crop * 3), y * crop * 3);
    }
    return out;
  }

  // Preprocess.pixels: resized and center-cropped RGB bytes (crop x crop x 3). Enlarging in
  // both directions the Python code runs PyTorch's kernel (int16 weights), otherwise Pillow's.
  function pixels(rgb, width, height, pre) {
    const [w, h] = resizedSize(width, height, pre.resize, pre.square_resize);
    const enlarge = w > width && h > height && Math.min(w, h) >= pre.crop;
    const bits = enlarge ? 0 : PILLOW_BITS;
    const resized = w === width && h === height ? rgb : resize(rgb, width, height, w, h, bits);
    return centerCrop(resized, w, h, pre.crop);
  }

  // Preprocess.normalize: float32 CHW in the network's channel order, scale, mean and std,
  // each step rounded to float32 as PyTorch computes it.
  function normalize(rgb, pre) {
    const n = pre.crop * pre.crop;
    const out = new Float32Array(3 * n);
    const f = Math.fround;
    for (let ch = 0; ch < 3; ch++) {
      const source = pre.bgr ? 2 - ch : ch;
      const [scale, mean, std] = [f(pre.scale), f(pre.mean[ch]), f(pre.std[ch])];
      for (let i = 0; i < n; i++) {
        out[ch * n + i] = f(f(f(rgb[i * 3 + source] * scale) - mean) / std);
      }
    }
    return out;
  }

  // transforms.to_rgb for decoded RGBA: translucent pixels composited onto white as Pillow's
  // alpha_composite does (7 fractional bits, rounded divisions by 255).
  function toRgb(rgba, width, height) {
    const out = new Uint8Array(width * height * 3);
    const div255 = (v) => ((v >>> 8) + v) >>> 8;
    for (let i = 0, n = width * height; i < n; i++) {
      const a = rgba[i * 4 + 3];
      for (let ch = 0; ch < 3; ch++) {
        const v = rgba[i * 4 + ch];
        if (a === 255) out[i * 3 + ch] = v;
        else if (a === 0) out[i * 3 + ch] = 255;
        else {
          const t = v * a * 128 + 255 * (255 * 128 - a * 128);
          out[i * 3 + ch] = div255(t + (0x80 << 7)) >>> 7;
        }
      }
    }
    return out;
  }

  // The photo's RGB bytes as decoded, EXIF-rotated, with no colour management (as Pillow).
  async function decode(blob) {
    const bitmap = await createImageBitmap(blob, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
      imageOrientation: "from-image",
    });
    const { width, height } = bitmap;
    if (width * height > MAX_PIXELS) {
      bitmap.close();
      throw new Error(`image of ${width}x${height} pixels is larger than the 64,000,000-pixel limit`);
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    return { rgb: toRgb(rgba, width, height), width, height };
  }

  // transforms: decoded RGB -> the network's float32 (1, 3, crop, crop) input data.
  function preprocess(image, pre) {
    return normalize(pixels(image.rgb, image.width, image.height, pre), pre);
  }

  // Softmax probabilities of the k best classes, as pipeline.top_classes.
  function topClasses(logits, info, k) {
    let max = -Infinity;
    for (const v of logits) max = Math.max(max, v);
    const exp = Array.from(logits, (v) => Math.exp(v - max));
    const total = exp.reduce((a, b) => a + b, 0);
    const order = exp.map((_, i) => i).sort((a, b) => exp[b] - exp[a] || a - b);
    return order.slice(0, k).map((i) => ({
      index: i,
      label: info.classes ? info.classes[i] : `class ${i}`,
      prob: exp[i] / total,
    }));
  }

  // Load model.json and model.onnx from `base` (a folder URL that also holds onnxruntime-web's
  // WASM files); returns { info, classify(blob) -> { top, logits, ms } }.
  async function load(base, modelFile = "model.onnx", infoFile = "model.json") {
    const ort = root.ort;
    ort.env.wasm.wasmPaths = base;
    ort.env.wasm.numThreads = 1; // no SharedArrayBuffer: no cross-origin isolation needed
    const response = await fetch(new URL(infoFile, base));
    if (!response.ok) throw new Error(`${infoFile}: HTTP ${response.status}`);
    const info = await response.json();
    const session = await ort.InferenceSession.create(new URL(modelFile, base).href, {
      executionProviders: ["wasm"],
    });
    const pre = info.preprocess;
    async function classify(blob, k = 5) {
      const start = performance.now();
      const image = await decode(blob);
      const input = new ort.Tensor("float32", preprocess(image, pre), [1, 3, pre.crop, pre.crop]);
      const output = await session.run({ [session.inputNames[0]]: input });
      const logits = output[session.outputNames[0]].data;
      const ms = performance.now() - start;
      return { top: topClasses(logits, info, k), logits: Array.from(logits), ms, image };
    }
    return { info, classify };
  }

  const api = { decode, preprocess, pixels, normalize, toRgb, resize, topClasses, load };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.SqueezeNet = api;
})(globalThis);
