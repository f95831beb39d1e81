// The machine's processes as Linux's /proc tells them: who is whose child,
// in which process group, and how much CPU each has used. For the tools that
// look at process trees (an APISIX instance's runner, a benchmark's CPU count).
import { readdirSync, readFileSync } from 'node:fs';

export interface ProcessEntry {
  pid: number;
  ppid: number;
  pgrp: number;
  /** utime + stime, in clock ticks (getconf CLK_TCK per second). */
  cpuTicks: number;
}

/** Every process now; ones that exit while being read are left out. */
export function processTable(): ProcessEntry[] {
  const entries: ProcessEntry[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command's closing parenthesis (the command may hold spaces): state, ppid, pgrp, ..., utime (12th), stime (13th).
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      entries.push({ pid: Number(entry), ppid: Number(fields[1]), pgrp: Number(fields[2]), cpuTicks: Number(fields[11]) + Number(fields[12]) });
    } catch {
      // gone meanwhile
    }
  }
  return entries;
}

/** A process's command line as /proc shows it (a title it set itself, for nginx); null when it is gone. */
export function commandLine(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return null;
  }
}

/** The pids of a process and all its descendants (from `table`, default now), the root first. */
export function processTree(rootPid: number, table: readonly ProcessEntry[] = processTable()): number[] {
  const tree: number[] = [];
  const todo = [rootPid];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    tree.push(pid);
    for (const p of table) if (p.ppid === pid) todo.push(p.pid);
  }
  return tree;
}

/**
 * How many times the threads of a process and all its descendants gave up
 * the CPU to wait (voluntary context switches, summed over every thread from
 * /proc/<pid>/task/<tid>/status): about how often they went to sleep and
 * were woken again. Threads that exit meanwhile are left out.
 */
export function treeVoluntarySwitches(rootPid: number): number {
  let switches = 0;
  for (const pid of processTree(rootPid)) {
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        const match = /^voluntary_ctxt_switches:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
        if (match) switches += Number(match[1]);
      } catch {
        // gone meanwhile
      }
    }
  }
  return switches;
}

/**
 * The machine's CPU time so far, in clock ticks over all cores (the first
 * line of /proc/stat): all of it, and what the hypervisor gave to other
 * guests while this one had work to run (steal), and idle (iowait included).
 * The share of steal between two readings says how much of a benchmark's
 * noise came from the host; the share not idle, how busy the machine was.
 */
export function machineCpuTicks(): { total: number; steal: number; idle: number } {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice; guest time is counted in user already.
  return { total: fields.slice(0, 8).reduce((sum, n) => sum + n, 0), steal: fields[7] ?? 0, idle: (fields[3] ?? 0) + (fields[4] ?? 0) };
}

/** Kilobytes of resident memory of a process (VmRSS) and its anonymous part (RssAnon: heap, not mapped files), or null once it is gone. */
export function residentKiB(pid: number): { kib: number; anon: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    const kib = field('VmRSS');
    return Number.isNaN(kib) ? null : { kib, anon: field('RssAnon') };
  } catch {
    return null;
  }
}
