// Hardens a worker's JavaScript engine before any fragment runs.  Evaluates to a
// function; call it once, after the runner has captured what it needs.
//
// For the main realm and the `debuggerGlobal` realm (PythonMonkey exposes it through a
// non-configurable binding that cannot be removed):
//   1. remove every global that is not plain ECMAScript (allowlist);
//   2. replace the Function, GeneratorFunction, AsyncFunction, AsyncGeneratorFunction
//      constructors and `eval` with functions that throw;
//   3. turn a few data properties that code commonly overrides on instances
//      (`toString`, `name`, `message`, `constructor`, ...) into accessors, so that
//      freezing their prototype does not break plain assignments (SES "override taming");
//   4. freeze everything reachable from the globals and from the hidden intrinsics
//      (iterator and generator prototypes, %ThrowTypeError%, ...).
// Returns the number of objects frozen.
(function () {
  "use strict";
  const ALLOWED = new Set([
    "AggregateError", "Array", "ArrayBuffer", "BigInt", "BigInt64Array", "BigUint64Array",
    "Boolean", "DataView", "Date", "Error", "EvalError", "Float16Array", "Float32Array",
    "Float64Array", "Function", "Infinity", "Int16Array", "Int32Array", "Int8Array",
    "InternalError", "Intl", "Iterator", "JSON", "Map", "Math", "NaN", "Number", "Object",
    "Promise", "Proxy", "RangeError", "ReferenceError", "Reflect", "RegExp", "Set", "String",
    "Symbol", "SyntaxError", "TypeError", "URIError", "Uint16Array", "Uint32Array",
    "Uint8Array", "Uint8ClampedArray", "WeakMap", "WeakSet", "decodeURI",
    "decodeURIComponent", "encodeURI", "encodeURIComponent", "escape", "eval", "globalThis",
    "isFinite", "isNaN", "parseFloat", "parseInt", "undefined", "unescape",
  ]);
  const G = globalThis;
  const realms = [G];
  const dgDesc = Object.getOwnPropertyDescriptor(G, "debuggerGlobal");
  if (dgDesc !== undefined) realms.push(dgDesc.value);

  // Hidden intrinsics, collected with each realm's own (still untamed) Function.
  const HIDDEN = `"use strict";
    const gp = Object.getPrototypeOf;
    const out = [];
    const add = (f) => { try { out.push(f()); } catch (_) {} };
    add(() => gp(function* () {}));
    add(() => gp(async function () {}));
    add(() => gp(async function* () {}));
    add(() => gp([][Symbol.iterator]()));
    add(() => gp(new Map()[Symbol.iterator]()));
    add(() => gp(new Set()[Symbol.iterator]()));
    add(() => gp(""[Symbol.iterator]()));
    add(() => gp(/a/[Symbol.matchAll]("")));
    add(() => gp(Iterator.from([]).map((x) => x)));
    add(() => gp(Iterator.from({ next() { return { done: true }; } })));
    add(() => gp(new Intl.Segmenter().segment("a")));
    add(() => gp(new Intl.Segmenter().segment("a")[Symbol.iterator]()));
    add(() => (function () { "use strict"; return Object.getOwnPropertyDescriptor(arguments, "callee").get; })());
    return out;`;
  const roots = [];
  for (const R of realms) {
    roots.push(R);
    for (const h of R.Function(HIDDEN)()) roots.push(h);
  }

  function thrower(what) {
    return function () {
      throw new TypeError(what + " is disabled in the sandbox");
    };
  }

  for (const R of realms) {
    // 1. allowlist the globals.
    for (const k of Reflect.ownKeys(R)) {
      if (typeof k === "string" && ALLOWED.has(k)) continue;
      if (R === G && k === "debuggerGlobal") continue;
      if (!Reflect.deleteProperty(R, k)) throw new Error("cannot remove global " + String(k));
    }
    // 2. tame code-from-strings.
    const F = R.Function;
    const gp = Object.getPrototypeOf;
    const ctors = [
      [F, "Function"],
      [gp(F("return function* () {}")()).constructor, "GeneratorFunction"],
      [gp(F("return async function () {}")()).constructor, "AsyncFunction"],
      [gp(F("return async function* () {}")()).constructor, "AsyncGeneratorFunction"],
    ];
    for (const [ctor, label] of ctors) {
      const tame = thrower(label);
      Object.defineProperty(tame, "prototype", { value: ctor.prototype });
      Object.defineProperty(ctor.prototype, "constructor", { value: tame });
      if (label === "Function") Object.defineProperty(R, "Function", { value: tame });
    }
    Object.defineProperty(R, "eval", { value: thrower("eval") });
    // 3. override taming.
    const O = R.Object.prototype;
    const E = R.Error.prototype;
    const enable = [
      [O, ["constructor", "toString", "valueOf", "toLocaleString", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable"]],
      [R.Function.prototype, ["toString"]],
      [R.Array.prototype, ["toString", "constructor", "push", "join"]],
      [E, ["name", "message", "toString", "constructor"]],
    ];
    for (const name of ["EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError", "URIError", "AggregateError", "InternalError"]) {
      if (R[name]) enable.push([R[name].prototype, ["name", "message", "constructor"]]);
    }
    for (const [proto, names] of enable) {
      for (const k of names) {
        const d = Object.getOwnPropertyDescriptor(proto, k);
        if (d === undefined || !("value" in d) || !d.configurable) continue;
        const value = d.value;
        Object.defineProperty(proto, k, {
          get() {
            return value;
          },
          set(v) {
            if (this === proto) throw new TypeError("Cannot assign to read only property '" + k + "' of a frozen prototype");
            Object.defineProperty(this, k, { value: v, writable: true, enumerable: true, configurable: true });
          },
          enumerable: d.enumerable,
          configurable: false,
        });
      }
    }
  }

  // 4. freeze everything reachable.
  const seen = new WeakSet();
  const todo = roots.slice();
  let count = 0;
  while (todo.length > 0) {
    const o = todo.pop();
    if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
    seen.add(o);
    Object.freeze(o);
    count++;
    todo.push(Object.getPrototypeOf(o));
    for (const k of Reflect.ownKeys(o)) {
      const d = Object.getOwnPropertyDescriptor(o, k);
      if (d === undefined) continue;
      if ("value" in d) todo.push(d.value);
      else {
        todo.push(d.get);
        todo.push(d.set);
      }
    }
  }
  return count;
});
