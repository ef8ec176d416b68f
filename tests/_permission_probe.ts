/**
 * Run by tests/startup_test.ts with exactly the server's permissions (deno task start's
 * flags): prints which of these operations Deno allowed.
 */
function attempt(action: () => unknown): string {
  try {
    action();
    return "allowed";
  } catch (error) {
    return error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ? "denied"
      : `failed: ${(error as Error).name}`;
  }
}

Deno.mkdirSync("./data", { recursive: true });
const results = {
  readOwnFolder: attempt(() => Deno.readTextFileSync("./deno.json")),
  readMigrations: attempt(() => Deno.readDirSync("./db/migrations")),
  writeData: attempt(() => Deno.writeTextFileSync("./data/.probe", "ok")),
  readEtc: attempt(() => Deno.readTextFileSync("/etc/hostname")),
  readParent: attempt(() => Deno.readDirSync("..")),
  readHome: attempt(() => Deno.readDirSync(Deno.env.get("HOME") ?? "/root")),
  writeOwnFolder: attempt(() => Deno.writeTextFileSync("./probe.txt", "no")),
  writeTmp: attempt(() => Deno.writeTextFileSync("/tmp/parley_probe.txt", "no")),
  runProcess: attempt(() => new Deno.Command("true").outputSync()),
  systemInfo: attempt(() => Deno.hostname()),
};
Deno.removeSync("./data/.probe");
console.log(JSON.stringify(results));
