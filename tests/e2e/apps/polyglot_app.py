"""The Python half of the cross-language tests: app "py-e2e", next to the TypeScript worker of
worker_sdk/typescript/test/e2e-app.ts (app "ts-e2e") on one server."""

from __future__ import annotations

from typing import Any

from stepline import Context, Stepline

app = Stepline(app_id="py-e2e")


@app.function(id="py-double", trigger="py/double")
async def py_double(ctx: Context) -> dict[str, Any]:
    x = ctx.event.data["x"]
    return await ctx.step.run("double", lambda: {"doubled": x * 2, "by": "py"})


@app.function(id="py-calls-ts", trigger="py/invoke-ts")
async def py_calls_ts(ctx: Context) -> dict[str, Any]:
    result = await ctx.step.invoke("call", function="ts-e2e:ts-double",
                                   data={"x": ctx.event.data["x"]}, timeout="30s")
    return {"result": result}
