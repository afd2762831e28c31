// The `{"execute":"NAME"` head of each command name seen, so the hot path does not
// re-escape the same few names for every command. Bounded: names come from code, not
// data, but a caller generating names must not grow it forever.
const heads = new Map<string, string>();
const oobHeads = new Map<string, string>();
const MAX_CACHED_NAMES = 1024;

function headOf(name: string, oob: boolean): string {
  const cache = oob ? oobHeads : heads;
  let head = cache.get(name);
  if (head === undefined) {
    head = `${oob ? '{"exec-oob":' : '{"execute":'}${JSON.stringify(name)}`;
    if (cache.size >= MAX_CACHED_NAMES) cache.clear();
    cache.set(name, head);
  }
  return head;
}

/**
 * Encodes one command as a line of JSON. It is built from pieces rather than by
 * stringifying a `{ execute, arguments, id }` object so the hot path allocates no
 * wrapper object per command; the output is the same JSON text. QEMU does not need the
 * newline, but it keeps a transcript or `socat` session readable.
 *
 * `args` that are `undefined` are left out entirely, as QEMU expects for commands
 * without arguments. Ids are integers chosen by the connection.
 */
export function serializeCommand(name: string, args: unknown, id: number, oob = false): string {
  const head = headOf(name, oob);
  if (args === undefined) return `${head},"id":${id}}\n`;
  const encodedArgs = JSON.stringify(args) as string | undefined;
  if (encodedArgs === undefined || encodedArgs[0] !== '{') {
    throw new TypeError(`arguments of ${name} must be a JSON object`);
  }
  return `${head},"arguments":${encodedArgs},"id":${id}}\n`;
}
