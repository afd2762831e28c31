/** Characters an excerpt keeps before it is cut with `...`. */
export const EXCERPT_LENGTH = 200;

type Frame =
  | { kind: 'object'; source: Record<string, unknown>; keys: string[]; next: number }
  | { kind: 'array'; source: readonly unknown[]; next: number };

/**
 * JSON-like text of the first `limit` characters of `value`, for error messages about what
 * a peer sent. It cannot throw and does a bounded amount of work whatever `value` is: it
 * walks the value iteratively (so nesting thousands of levels deep costs no stack), stops as
 * soon as it has `limit` characters (so a huge value costs no more than a small one, and a
 * cycle ends too), and calls no code of the value's own (`toJSON`, getters through
 * `JSON.stringify`), which `JSON.stringify` would do.
 */
export function excerptOf(value: unknown, limit = EXCERPT_LENGTH): string {
  try {
    let out = '';
    const stack: Frame[] = [];
    let pending: unknown = value;
    let hasPending = true;
    while (out.length <= limit) {
      if (hasPending) {
        hasPending = false;
        const item = pending;
        if (typeof item === 'object' && item !== null) {
          if (Array.isArray(item)) {
            out += '[';
            stack.push({ kind: 'array', source: item, next: 0 });
          } else {
            out += '{';
            stack.push({ kind: 'object', source: item as Record<string, unknown>, keys: Object.keys(item), next: 0 });
          }
        } else {
          out += scalar(item, limit - out.length);
        }
        continue;
      }
      const frame = stack[stack.length - 1];
      if (frame === undefined) return out;
      if (frame.kind === 'array') {
        if (frame.next >= frame.source.length) {
          out += ']';
          stack.pop();
          continue;
        }
        if (frame.next > 0) out += ',';
        pending = frame.source[frame.next++];
      } else {
        if (frame.next >= frame.keys.length) {
          out += '}';
          stack.pop();
          continue;
        }
        const key = frame.keys[frame.next++]!;
        out += `${frame.next > 1 ? ',' : ''}${scalar(key, limit - out.length)}:`;
        pending = frame.source[key];
      }
      hasPending = true;
    }
    return `${out.slice(0, limit)}...`;
  } catch {
    // Only something exotic (a revoked Proxy, a throwing getter) ends up here.
    return '(a value that cannot be shown)';
  }
}

function scalar(value: unknown, room: number): string {
  switch (typeof value) {
    case 'string':
      // Cut before quoting: a 10 MiB string costs no more than a short one.
      return JSON.stringify(value.length > room ? value.slice(0, Math.max(0, room)) : value);
    case 'number':
    case 'boolean':
    case 'bigint':
      return String(value);
    case 'undefined':
      return 'undefined';
    case 'symbol':
      return value.description === undefined ? 'Symbol()' : `Symbol(${value.description})`;
    case 'function':
      return '[function]';
    default:
      return 'null';
  }
}

/** The message of a thrown value, without running code of its own beyond reading `message`. */
export function describeThrown(error: unknown): string {
  try {
    if (error instanceof Error) return typeof error.message === 'string' ? error.message : error.name;
    return typeof error === 'string' ? error : excerptOf(error);
  } catch {
    return '(an error that cannot be shown)';
  }
}
