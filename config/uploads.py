"""Uploads spooled to disk leave nothing behind when the disk fills."""

from django.core.files import uploadhandler


class TemporaryFileUploadHandler(uploadhandler.TemporaryFileUploadHandler):
    """Django's handler for uploads past FILE_UPLOAD_MAX_MEMORY_SIZE, whose partial file is closed,
    and so deleted, as soon as a write to it fails (a full disk), not whenever it is collected."""

    def receive_data_chunk(self, raw_data, start):
        try:
            self.file.write(raw_data)
        except BaseException:
            self.file.close()
            raise
