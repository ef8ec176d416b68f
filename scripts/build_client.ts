/**
 * Builds the front-end client as an npm-installable folder (default `dist/client/`):
 * `parley_client.js` (one ES module, dependencies bundled, web-standard APIs only) and
 * `.d.ts` files emitted by npm's `tsc`, so a Next.js or Node project gets full types.
 *
 *   deno task build:client [outDir]
 */

const ROOT = new URL("..", import.meta.url);

/** TypeScript used to emit declarations (and by the consumer test). */
export const TYPESCRIPT_VERSION = "5.9.3";

/** Runs a command; throws with its output when it fails. */
async function run(cmd: string, args: string[], cwd: string | URL): Promise<void> {
  const { code, stdout, stderr } = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    throw new Error(
      `Cannot build the client: ${cmd} ${args.join(" ")} exited with ${code}\n` +
        `${decode(stdout)}${decode(stderr)}`,
    );
  }
}

/** The npm packages deno.json maps, as `{ name: version }`. */
async function npmVersions(): Promise<Record<string, string>> {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const versions: Record<string, string> = {};
  for (const specifier of Object.values(config.imports as Record<string, string>)) {
    const match = /^npm:(@?[^@]+)@([^/]+)/.exec(specifier);
    if (match) versions[match[1]] = match[2];
  }
  return versions;
}

async function copyTree(from: URL, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    if (entry.isDirectory) {
      await copyTree(new URL(`${entry.name}/`, from), `${to}/${entry.name}`);
    } else if (entry.name.endsWith(".ts")) {
      await Deno.copyFile(new URL(entry.name, from), `${to}/${entry.name}`);
    }
  }
}

/** Bundles `client/mod.ts` and its dependencies into one browser ES module at `outFile`. */
export async function bundleClient(outFile: string): Promise<void> {
  await run(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform=browser",
    "--output",
    outFile,
    "client/mod.ts",
  ], ROOT);
}

/** Builds the client package into `outDir`; returns its absolute path. */
export async function buildClient(outDir: string): Promise<string> {
  const out = await Deno.realPath(".").then((cwd) =>
    outDir.startsWith("/") ? outDir : `${cwd}/${outDir}`
  );
  await Deno.remove(out, { recursive: true }).catch(() => {});
  await Deno.mkdir(out, { recursive: true });

  // 1. The runtime code: one ES module with @trpc/client and superjson inside.
  await bundleClient(`${out}/parley_client.js`);

  // 2. The types: tsc over the client and the server types it imports, in a scratch
  //    npm project that has the same package versions as deno.json.
  const versions = await npmVersions();
  const work = await Deno.makeTempDir({ prefix: "parley_client_build_" });
  try {
    await Deno.writeTextFile(
      `${work}/package.json`,
      JSON.stringify({
        private: true,
        type: "module",
        dependencies: {
          ...versions,
          typescript: TYPESCRIPT_VERSION,
          "@types/node": "20.19.43",
        },
      }),
    );
    await run("npm", ["install", "--no-audit", "--no-fund", "--ignore-scripts"], work);
    for (const dir of ["client", "server", "db"]) {
      await copyTree(new URL(`${dir}/`, ROOT), `${work}/src/${dir}`);
    }
    await Deno.writeTextFile(
      `${work}/tsconfig.json`,
      JSON.stringify({
        compilerOptions: {
          declaration: true,
          emitDeclarationOnly: true,
          allowImportingTsExtensions: true,
          rewriteRelativeImportExtensions: true,
          module: "nodenext",
          moduleResolution: "nodenext",
          target: "es2022",
          // es2024: the server code the types come from uses String.prototype.isWellFormed.
          lib: ["es2024", "dom"],
          types: ["node"],
          strict: true,
          skipLibCheck: true,
          rootDir: "src",
          outDir: "types",
        },
        files: ["src/client/mod.ts"],
      }),
    );
    await run(`${work}/node_modules/.bin/tsc`, ["-p", "tsconfig.json"], work);
    await copyTree(new URL(`file://${work}/types/`), `${out}/types`);
  } finally {
    await Deno.remove(work, { recursive: true });
  }

  await Deno.writeTextFile(
    `${out}/parley_client.d.ts`,
    'export * from "./types/client/mod.js";\n',
  );
  // The bundle needs nothing at run time; the types refer to these packages.
  const typeDependencies = ["@trpc/client", "@trpc/server", "postgres", "zod"];
  await Deno.writeTextFile(
    `${out}/package.json`,
    JSON.stringify(
      {
        name: "parley-client",
        version: "0.1.0",
        description: "Typed client for the parley chat backend",
        type: "module",
        main: "./parley_client.js",
        types: "./parley_client.d.ts",
        exports: { ".": { types: "./parley_client.d.ts", default: "./parley_client.js" } },
        dependencies: Object.fromEntries(typeDependencies.map((name) => [name, versions[name]])),
      },
      null,
      2,
    ) + "\n",
  );
  return out;
}

if (import.meta.main) {
  const out = await buildClient(Deno.args[0] ?? "dist/client");
  console.log(`Built the client into ${out}`);
}
