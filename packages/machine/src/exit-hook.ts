import { rmSync } from 'node:fs';

/**
 * What the hook needs to clean up after one QEMU process if Node goes away first. Kept as
 * plain data (not the QemuProcess) so the handlers below stay synchronous and cannot throw
 * through user code.
 */
export interface ExitHookEntry {
  /** Set once the child is spawned. */
  pid: number | undefined;
  /** Set when Node has seen the child exit; no signal is sent after that (the pid may be reused). */
  exited: boolean;
  /** Temporary directory to remove, if any. */
  dir: string | undefined;
}

const entries = new Set<ExitHookEntry>();
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let installed = false;

function cleanUpEverything(): void {
  for (const entry of entries) {
    if (entry.pid !== undefined && !entry.exited) {
      try {
        process.kill(entry.pid, 'SIGKILL');
      } catch {
        // Already gone: nothing to do.
      }
    }
    if (entry.dir !== undefined) {
      try {
        rmSync(entry.dir, { recursive: true, force: true });
      } catch {
        // Best effort while Node is exiting; there is nobody left to report to.
      }
    }
  }
  entries.clear();
}

/**
 * 'exit' also runs after an uncaught exception or unhandled rejection (Node emits it on
 * its way out), so one handler covers normal exits and crashes. Only synchronous work is
 * possible here.
 */
function onExit(): void {
  cleanUpEverything();
}

/**
 * A signal listener replaces Node's default "terminate" action. When this hook is the
 * only listener, nobody else will end the process, so it cleans up and re-raises the
 * signal with the default action restored: the process still dies of that signal, with
 * the exit status a shell expects. When the application has its own listener, the
 * application decides; the 'exit' handler still runs if it then exits.
 */
function onSignal(signal: NodeJS.Signals): void {
  if (process.listenerCount(signal) > 1) return;
  cleanUpEverything();
  uninstall();
  process.kill(process.pid, signal);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', onExit);
  for (const signal of FORWARDED_SIGNALS) process.on(signal, onSignal);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  process.removeListener('exit', onExit);
  for (const signal of FORWARDED_SIGNALS) process.removeListener(signal, onSignal);
}

/** Starts tracking an entry; the process-wide listeners are installed on first use. */
export function trackForExit(entry: ExitHookEntry): void {
  entries.add(entry);
  install();
}

/** Stops tracking an entry; the listeners are removed once nothing is tracked. */
export function untrackForExit(entry: ExitHookEntry): void {
  entries.delete(entry);
  if (entries.size === 0) uninstall();
}

/** Number of processes or directories the hook would clean up now (for diagnostics and tests). */
export function trackedForExitCount(): number {
  return entries.size;
}
