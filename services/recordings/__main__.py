from services.recordings.store import RecordingsAdapter
from shared.worker.main import run_worker

run_worker("recordings", RecordingsAdapter.from_env)
