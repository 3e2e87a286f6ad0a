/** Deterministic step ids: the name for its first use in a run, then `name:1`, `name:2`…
 * exactly as the Python SDK derives them, so the ids agree across SDKs. */
export class StepIds {
  private readonly nextIndex = new Map<string, number>();
  private readonly used = new Set<string>();

  next(name: string): string {
    let n = this.nextIndex.get(name) ?? 0;
    let stepId: string;
    for (;;) {
      stepId = n === 0 ? name : `${name}:${n}`;
      n += 1;
      if (!this.used.has(stepId)) break;
    }
    this.nextIndex.set(name, n);
    this.used.add(stepId);
    return stepId;
  }
}
