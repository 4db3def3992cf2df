"""Domain errors of the training app; they map to HTTP like labeling's (same base class)."""

from labeling.exceptions import LabelingError


class InvalidTrainingRequest(LabelingError):
    status_code = 400
    code = "invalid"


class RunAlreadyActive(LabelingError):
    status_code = 409
    code = "run_already_active"


class RunNotCancellable(LabelingError):
    status_code = 409
    code = "not_cancellable"


class VersionNotPromotable(LabelingError):
    status_code = 409
    code = "not_promotable"


class TrainingFailed(Exception):
    """A run that cannot proceed (no data, no reward model, a failed rank...); the message is shown as is."""
