// Small adapters for what the SDK does not offer (yet). Each item says which package it
// belongs to; the lead moves them there and this file shrinks.

import { QmpProtocolError } from '@qmpkit/client';
import { QemuLaunchError, type QemuMachine } from '@qmpkit/machine';

/** Whether `error` (or one of its causes) is the client refusing an event that came before the greeting. */
function isEventBeforeGreeting(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (QmpProtocolError.isInstance(e) && /expected a QMP greeting, got an event/.test(e.message)) return true;
  }
  return false;
}

/**
 * Belongs in @qmpkit/client: when the client connects while QEMU is still starting, QEMU can
 * send an event (RESUME, as the machine starts running) before its greeting; the client then
 * fails the connection ("expected a QMP greeting, got an event") and the launch fails with
 * `QemuLaunchError` (seen about once in 60 launches on a loaded 2-core machine). The client
 * should keep such events (buffer them, or drop them) and go on with the greeting. Until it
 * does, a launch that failed this way is tried once more; any other failure is thrown as is.
 */
export async function launchMachine(machine: QemuMachine, options: { signal?: AbortSignal; timeout?: number }): Promise<void> {
  try {
    await machine.launch(options);
  } catch (error) {
    if (!QemuLaunchError.isInstance(error) || !isEventBeforeGreeting(error) || options.signal?.aborted) throw error;
    await machine.launch(options);
  }
}
