"""The HTTP bridge: runs of apps that registered a URL (serverless apps, Stepline's own
`serve()` handlers, unmodified Inngest SDK apps) are leased like any other and sent to the app
as one HTTP request per step boundary; the answer is applied with the same engine calls as a
worker stream's ops. Each wire protocol is a thin translator (protocol.AppProtocol)."""
