// A real node of the service for the package's tests: `python run.py` on a free port with a
// temporary data folder (the embedded database), an API key with every scope, and REST
// helpers. The Python is $NOTIFY_PYTHON, else the repository's .venv, else python3.
import { execFile, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const SECRET = "package-tests-secret-0123456789-abcdef";
const PYTHON =
  process.env.NOTIFY_PYTHON ||
  (existsSync(join(ROOT, ".venv", "bin", "python")) ? join(ROOT, ".venv", "bin", "python") : "python3");

function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** Poll `check` until it returns a truthy value; fail after `ms`. */
export async function until(check, ms = 20000, what = "the condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** An HS256 JWT signed with the test secret (or another, to be refused). */
export function sign(claims, secret = SECRET) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export function tokenFor(userId, seconds = 600, secret = SECRET) {
  return sign({ sub: userId, roles: ["patient"], exp: Math.floor(Date.now() / 1000) + seconds }, secret);
}

export class Service {
  static async start(env = {}) {
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), "notify-js-"));
    const settings = {
      ...process.env,
      NOTIFY_TOKEN_SECRET: SECRET,
      NOTIFY_LOG_LEVEL: "WARNING",
      NOTIFY_API_KEY_CACHE_SECONDS: "0",
      ...env,
    };
    const proc = spawn(PYTHON, ["run.py", "--port", String(port), "--data-dir", dataDir], {
      cwd: ROOT,
      env: settings,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    proc.stderr.on("data", (chunk) => (stderr = (stderr + chunk).slice(-4000)));
    const service = new Service(proc, port, dataDir);
    try {
      await until(
        async () => {
          if (proc.exitCode !== null) {
            throw new Error(`the service exited: ${stderr}`);
          }
          try {
            return (await fetch(`${service.url}/readyz`)).ok;
          } catch {
            return false;
          }
        },
        60000,
        "the service to be ready",
      );
      const { stdout } = await promisify(execFile)(
        PYTHON,
        ["run.py", "create-api-key", "--data-dir", dataDir, "--name", "tests",
         "--scopes", "notify,broadcast,tokens,read,admin"],
        { cwd: ROOT, env: settings },
      );
      service.key = stdout.trim().split("\n").pop();
    } catch (err) {
      await service.stop();
      throw err;
    }
    return service;
  }

  constructor(proc, port, dataDir) {
    this.proc = proc;
    this.port = port;
    this.dataDir = dataDir;
    this.url = `http://127.0.0.1:${port}`;
  }

  /** A REST call with the API key; returns the envelope's data, throws on a failure. */
  async call(method, path, body, expect = [200, 201]) {
    const response = await fetch(this.url + path, {
      method,
      headers: { Authorization: `Bearer ${this.key}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (!expect.includes(response.status)) {
      throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
    }
    return answer.data;
  }

  notify(userId, title = "Hello", extra = {}) {
    return this.call("POST", "/v1/notifications", {
      user_id: userId, type: "custom", title, message: "m", ...extra,
    });
  }

  async stop() {
    if (this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
      if (this.proc.exitCode === null) {
        this.proc.kill("SIGKILL");
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A storage object (getItem/setItem) kept in memory. */
export function memoryStorage() {
  const map = new Map();
  return {
    map,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
  };
}

/** Record a client's events: `log.of("status")` lists one kind. */
export function record(client) {
  const log = [];
  for (const type of ["notification", "read", "acknowledged", "unread", "status", "error"]) {
    client.on(type, (event, info) => log.push({ type, event, info }));
  }
  log.of = (type) => log.filter((e) => e.type === type).map((e) => e.event);
  return log;
}
