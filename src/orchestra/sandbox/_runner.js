// The fragment runner: compiles fragments (cached), runs them on JSON bindings and
// turns the results, or what was thrown, into one JSON reply text.  Shared by the worker
// process and the in-process sandbox.  Evaluates to a factory; call it with the output
// cap (in UTF-16 code units) and it returns the function that serves requests.
//
// Everything used after start-up is captured here, before any fragment can run.
//
// Requests: {"f": [[source, bind, guard], ...], "n": [name, ...]} TAB value TAB value ...
//             run a batch of fragments in order; each binding's value is its own JSON
//             text (JSON text never holds a raw tab), in the order of "n"; "r": [index,
//             ...] (optional) marks values the host sent as it got them (an HTTP
//             body): each binds as a string when it is not JSON text
//           {"s": source, "c": 1}       compile only
//           "?"                         index of the fragment last run
// A fragment gets as parameters only the bindings whose names appear in its source as
// words (all of them if it mentions `arguments` or `eval`, or has a \u escape), each
// parsed afresh from its text, so no fragment sees another's changes; and, under its
// `bind` name, the JSON result of every earlier fragment that has one.  A `guard`
// fragment (1) whose JSON result is falsy (null, false, 0, "") ends the batch.
// A bind "name.key" sets property key of the object bound to name instead (a binding
// that is absent or not an object counts as {}).  "m": {"o": index, "f": [...], "x": limit,
// "i": 0|1} in a batch request runs the fragments "f" once per element (the first "x")
// of the list the fragment at "o" returned (when the batch ran to its end), each with
// `item` and `index` (and `input` if "i" is 1) bound to the element and its position.
// Replies  (JSON text): {"ok": [<result>, ...]} (with "m": [[<result>, ...], ...] | null
//                       when the request has "m")
//                     | {"e": message, "k": kind, "l": line, "c": column, "i": index}
//   kind: "script" (the fragment's fault), "oom" (out of memory), "output" (too large);
//   index: the fragment of the batch that failed (those of "m" follow those of "f").
(function (maxOutput) {
  "use strict";
  const MakeFunction = Function;
  const ErrorProto = Error.prototype;
  const SyntaxErrorCtor = SyntaxError;
  const SyntaxErrorProto = SyntaxError.prototype;
  const PromiseCtors = [Promise];
  const jsonParse = JSON.parse;
  const jsonStringify = JSON.stringify;
  const apply = Reflect.apply;
  const keys = Object.keys;
  const isArray = Array.isArray;
  const arrIndexOf = Array.prototype.indexOf;
  const getOwn = Reflect.getOwnPropertyDescriptor;
  const getProto = Reflect.getPrototypeOf;
  const isProtoOf = Object.prototype.isPrototypeOf;
  const hasOwn = Object.hasOwn;
  const isFrozen = Object.isFrozen;
  const toWellFormed = String.prototype.toWellFormed;
  const strSlice = String.prototype.slice;
  const strEndsWith = String.prototype.endsWith;
  const strIndexOf = String.prototype.indexOf;
  const strReplace = String.prototype.replace;
  const strSplit = String.prototype.split;
  const strMatch = String.prototype.match;
  const SetCtor = Set;
  const setHas = Set.prototype.has;
  const symToString = Symbol.prototype.toString;
  const RegExpCtors = [RegExp];
  const regexpExec = RegExp.prototype.exec;
  const isFiniteNumber = Number.isFinite;
  const StringCtor = String;
  const MapCtor = Map;
  const mapGet = Map.prototype.get;
  const mapSet = Map.prototype.set;
  const mapClear = Map.prototype.clear;
  const mapSize = getOwn(Map.prototype, "size").get;
  const MAX_MESSAGE = 2000;
  const MAX_SAFE = 9007199254740991;
  const MAX_CACHE = 2000;
  // An escaped lone surrogate in JSON.stringify output (well-formed JSON.stringify never
  // escapes a valid pair), not preceded by an escaping backslash.
  const LONE = /(?<!\\)((?:\\\\)*)\\ud[89a-f][0-9a-f]{2}/g;
  const dg = typeof debuggerGlobal === "object" ? debuggerGlobal : undefined;
  if (dg !== undefined) {
    PromiseCtors.push(dg.Promise);
    RegExpCtors.push(dg.RegExp);
  }
  const resetters = [];
  for (const R of RegExpCtors) resetters.push(new R("(?:)"));

  // Lines the Function constructor puts before the body ("function anonymous(\n) {\n").
  let header = 2;
  try {
    MakeFunction("@");
  } catch (e) {
    header = e.lineNumber - 1;
  }
  const EXPR_PREFIX = '"use strict";\nreturn (\n';
  const BODY_PREFIX = '"use strict";\n';
  const EXPR_OFFSET = header + 2;
  const BODY_OFFSET = header + 1;

  const cache = new MapCtor();
  const usageCache = new MapCtor();
  const WORD = /[A-Za-z_$][\w$]*/g;
  // Results that may hold what JSON.stringify hides (NaN, Infinity as null) or cannot
  // print exactly (integers beyond 2^53 as 16 digits or more): checked with the replacer.
  const SUSPECT = /null|\d{16}/;
  let current = 0; // the fragment of the batch being run (errors name it)
  let last = 0; // the same, kept across requests for the worker's "?" question

  function wellFormed(s) {
    return apply(toWellFormed, s, []);
  }

  function clip(s) {
    s = wellFormed(s);
    return s.length > MAX_MESSAGE ? apply(strSlice, s, [0, MAX_MESSAGE]) + "…" : s;
  }

  // Reads a property along the prototype chain without running getters, except those
  // of frozen objects (the intrinsics' override-taming accessors in a worker).
  function dataProp(o, k) {
    for (let i = 0; o !== null && i < 64; i++) {
      const d = getOwn(o, k);
      if (d !== undefined) {
        if (hasOwn(d, "value")) return d.value;
        return d.get !== undefined && isFrozen(o) ? apply(d.get, o, []) : undefined;
      }
      o = getProto(o);
    }
    return undefined;
  }

  function reply(message, kind, line, column) {
    return jsonStringify({ e: clip(message), k: kind, l: line, c: column, i: current });
  }

  // Describes any thrown value without running its code where that can be avoided.
  function thrown(e, offset, prefix) {
    try {
      if (e === "out of memory") return reply("out of memory", "oom", 0, 0);
      const t = typeof e;
      if (t === "symbol") return reply(prefix + "uncaught exception: " + apply(symToString, e, []), "script", 0, 0);
      if (e === null || (t !== "object" && t !== "function")) {
        return reply(prefix + "uncaught exception: " + StringCtor(e), "script", 0, 0);
      }
      let message = dataProp(e, "message");
      message = typeof message === "string" ? message : "";
      if (!apply(isProtoOf, ErrorProto, [e])) {
        return reply(prefix + "uncaught exception: " + (message || "a non-Error object"), "script", 0, 0);
      }
      let name = dataProp(e, "name");
      name = typeof name === "string" && name ? name : "Error";
      let line = 0;
      let column = 0;
      const file = dataProp(e, "fileName");
      const inFragment = typeof file === "string" && apply(strEndsWith, file, ["> Function"]);
      if (offset > 0 && inFragment) {
        const l = dataProp(e, "lineNumber");
        const c = dataProp(e, "columnNumber");
        if (typeof l === "number" && l - offset > 0) {
          line = l - offset;
          column = typeof c === "number" && c > 0 ? c : 0;
        }
      }
      return reply(prefix + name + (message ? ": " + message : ""), "script", line, column);
    } catch (_) {
      return reply(prefix + "uncaught exception (undescribable value)", "script", 0, 0);
    }
  }

  // A compile error, its position clamped into the fragment (an error found at the
  // wrapper's closing brace is reported just past the fragment's last character).
  // -> [message, kind, line, column] (cached with the source: no batch index in it)
  function compileError(e, offset, src) {
    if (e === "out of memory") return ["out of memory", "oom", 0, 0];
    let message = "";
    let line = 0;
    let column = 0;
    try {
      message = StringCtor(e.message);
      if (typeof e.lineNumber === "number" && e.lineNumber - offset > 0) {
        line = e.lineNumber - offset;
        column = typeof e.columnNumber === "number" ? e.columnNumber : 0;
        const lines = src.split("\n");
        if (line > lines.length) {
          line = lines.length;
          column = lines[line - 1].length + 1;
        }
      }
    } catch (_) {
      message = "does not compile";
    }
    return ["SyntaxError: " + message, "script", line, column];
  }

  function errorReply(err) {
    return reply(err[0], err[1], err[2], err[3]);
  }

  // -> {fn, offset} or {error: [message, kind, line, column]}
  function compile(src, names) {
    const key = names.join(",") + "\u0000" + src;
    let c = apply(mapGet, cache, [key]);
    if (c !== undefined) return c;
    try {
      c = { fn: apply(MakeFunction, undefined, [...names, EXPR_PREFIX + src + "\n);"]), offset: EXPR_OFFSET };
    } catch (e) {
      if (!apply(isProtoOf, SyntaxErrorCtor.prototype, [e])) return { error: compileError(e, 0, src) };
      try {
        c = { fn: apply(MakeFunction, undefined, [...names, BODY_PREFIX + src]), offset: BODY_OFFSET };
      } catch (e2) {
        c = { error: compileError(e2, BODY_OFFSET, src) };
      }
    }
    if (apply(mapSize, cache, []) >= MAX_CACHE) apply(mapClear, cache, []);
    apply(mapSet, cache, [key, c]);
    return c;
  }

  function replacer(key, v) {
    if (typeof v === "number") {
      if (!isFiniteNumber(v)) throw new TypeError("the result contains " + v + ", which JSON cannot carry");
      // Integral numbers beyond 2^53-1 print as digits (below 1e21) that are not exact.
      if ((v > MAX_SAFE || v < -MAX_SAFE) && v < 1e21 && v > -1e21) {
        throw new RangeError("the result contains " + v + ", an integer beyond ±(2^53-1) that is not exact; return it as a string");
      }
    } else if (typeof v === "bigint") {
      throw new TypeError("the result contains a BigInt, which JSON cannot carry");
    }
    return v;
  }

  function isPromise(r) {
    if (r === null || typeof r !== "object") return false;
    for (const P of PromiseCtors) if (apply(isProtoOf, P.prototype, [r])) return true;
    return false;
  }

  function resetStatics() {
    for (const r of resetters) apply(regexpExec, r, [""]);
  }

  // The words of a fragment's source (a Set), or null when it may reach any binding.
  function usage(src) {
    let u = apply(mapGet, usageCache, [src]);
    if (u !== undefined) return u;
    u = null;
    if (apply(strIndexOf, src, ["\\u"]) === -1) {
      const words = apply(strMatch, src, [WORD]);
      u = new SetCtor(words === null ? [] : words);
      if (apply(setHas, u, ["arguments"]) || apply(setHas, u, ["eval"])) u = null;
    }
    if (apply(mapSize, usageCache, []) >= MAX_CACHE) apply(mapClear, usageCache, []);
    apply(mapSet, usageCache, [src, u]);
    return u;
  }

  // One fragment on its arguments -> [ok, text]: the JSON text of the result, or a reply.
  function runOne(src, names, args) {
    const c = compile(src, names);
    if (c.error !== undefined) return [false, errorReply(c.error)];
    resetStatics();
    let r;
    try {
      r = apply(c.fn, undefined, args);
    } catch (e) {
      return [false, thrown(e, c.offset, "")];
    }
    if (isPromise(r)) return [false, reply("the fragment returned a Promise; fragments are synchronous", "script", 0, 0)];
    let out;
    let checked = false;
    try {
      out = jsonStringify(r);
    } catch (e) {
      checked = true;
    }
    if (checked || (out !== undefined && apply(regexpExec, SUSPECT, [out]) !== null)) {
      try {
        out = jsonStringify(r, replacer);
      } catch (e) {
        return [false, thrown(e, c.offset, "cannot convert the result to JSON: ")];
      }
    }
    if (out === undefined) out = "null";
    if (out.length > maxOutput) {
      return [false, reply("the result is larger than the output limit (" + maxOutput + " characters)", "output", 0, 0)];
    }
    if (apply(strIndexOf, out, ["\\ud"]) !== -1) out = apply(strReplace, out, [LONE, "$1\\ufffd"]);
    return [true, out];
  }

  function malformed() {
    return reply("sandbox: malformed request", "script", 0, 0);
  }

  const KEY = /^[A-Za-z_$][\w$]*$/;

  // Binds `text` (JSON) as `bind` ("name" or "name.key") in names/texts; false if malformed.
  function bindText(names, texts, bind, text) {
    const dot = apply(strIndexOf, bind, ["."]);
    const name = dot === -1 ? bind : apply(strSlice, bind, [0, dot]);
    const at = apply(arrIndexOf, names, [name]);
    if (dot !== -1) {
      const key = apply(strSlice, bind, [dot + 1]);
      if (apply(regexpExec, KEY, [key]) === null) return false;
      let base = at === -1 ? "{}" : texts[at];
      if (base[0] !== "{") base = "{}";
      const prop = '"' + key + '":' + text + "}";
      text = base === "{}" ? "{" + prop : apply(strSlice, base, [0, -1]) + "," + prop;
    }
    if (at === -1) {
      names[names.length] = name;
      texts[texts.length] = text;
    } else {
      texts[at] = text;
    }
    return true;
  }

  // Runs a batch on names/texts (changed by its binds): [error reply] or [null, outs, results, ran all].
  function runBatch(frags, names, texts, base) {
    let outs = "";
    const results = [];
    for (let i = 0; i < frags.length; i++) {
      current = base + i;
      last = current;
      const f = frags[i];
      if (!isArray(f) || typeof f[0] !== "string" || (f[1] !== null && typeof f[1] !== "string")) {
        return [malformed()];
      }
      const src = f[0];
      const u = usage(src);
      const params = [];
      const args = [];
      for (let j = 0; j < names.length; j++) {
        if (u === null || apply(setHas, u, [names[j]])) {
          params[params.length] = names[j];
          args[args.length] = jsonParse(texts[j]);
        }
      }
      const done = runOne(src, params, args);
      if (!done[0]) return [done[1]];
      const out = done[1];
      outs = i === 0 ? out : outs + "," + out;
      results[i] = out;
      if (f[1] !== null && !bindText(names, texts, f[1], out)) return [malformed()];
      if (f[2] === 1 && (out === "null" || out === "false" || out === "0" || out === '""')) {
        return [null, outs, results, false];
      }
    }
    return [null, outs, results, true];
  }

  // The "m" part of a request: [error reply] or [null, JSON text of the results].
  function runEach(m, names, texts, ran, base) {
    if (m === null || typeof m !== "object" || !isArray(m.f) || typeof m.o !== "number" || typeof m.x !== "number") {
      return [malformed()];
    }
    if (!ran[3] || m.o < 0 || m.o >= ran[2].length) return [null, "null"];
    const list = jsonParse(ran[2][m.o]);
    if (!isArray(list)) return [null, "null"];
    const n = list.length < m.x ? list.length : m.x;
    let outs = "";
    for (let k = 0; k < n; k++) {
      const en = [];
      const et = [];
      for (let j = 0; j < names.length; j++) {
        en[j] = names[j];
        et[j] = texts[j];
      }
      const item = jsonStringify(list[k]);
      bindText(en, et, "item", item);
      bindText(en, et, "index", "" + k);
      if (m.i === 1) bindText(en, et, "input", item);
      const r = runBatch(m.f, en, et, base);
      if (r[0] !== null) return r;
      outs = k === 0 ? "[" + r[1] + "]" : outs + ",[" + r[1] + "]";
    }
    return [null, "[" + outs + "]"];
  }

  function run(line) {
    current = 0;
    if (line === "?") return "" + last;
    const parts = apply(strSplit, line, ["\t"]);
    const req = jsonParse(parts[0]);
    if (req.c === 1) {
      const c = compile(req.s, []);
      return c.error !== undefined ? errorReply(c.error) : '{"ok":null}';
    }
    const frags = req.f;
    const names = req.n;
    if (!isArray(frags) || !isArray(names) || names.length !== parts.length - 1) return malformed();
    const texts = [];
    for (let j = 0; j < names.length; j++) {
      if (typeof names[j] !== "string") return malformed();
      texts[j] = parts[j + 1];
    }
    const raw = req.r;
    if (raw !== undefined) {
      // Raw bindings: text the host did not check; what is not JSON binds as a string.
      if (!isArray(raw)) return malformed();
      for (let k = 0; k < raw.length; k++) {
        const j = raw[k];
        if (typeof j !== "number" || !(j >= 0 && j < texts.length) || j !== (j | 0)) return malformed();
        try {
          jsonParse(texts[j]);
        } catch (e) {
          if (!apply(isProtoOf, SyntaxErrorProto, [e])) throw e;
          texts[j] = jsonStringify(texts[j]);
        }
      }
    }
    const ran = runBatch(frags, names, texts, 0);
    if (ran[0] !== null) return ran[0];
    if (req.m === undefined) return '{"ok":[' + ran[1] + "]}";
    const each = runEach(req.m, names, texts, ran, frags.length);
    if (each[0] !== null) return each[0];
    return '{"ok":[' + ran[1] + '],"m":' + each[1] + "}";
  }

  function safeRun(line) {
    try {
      return run(line);
    } catch (e) {
      return thrown(e, 0, "sandbox: ");
    }
  }

  return safeRun;
});
