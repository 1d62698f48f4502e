"""The benchmark's floor: a FastAPI route that validates the same request body as
``POST /v1/activate`` (the same pydantic model) and echoes it, served like HQ (uvicorn,
two workers, httptools and uvloop, no access log). HQ's activations per second are
quoted as a ratio to this, measured in the same run."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from provisioning.server.api_models import ActivateRequest

app = FastAPI()


@app.post("/v1/activate", status_code=201)
def activate(body: ActivateRequest) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=201)
